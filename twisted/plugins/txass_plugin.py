"""
The twistd plugin of txass: C{twistd ass --service NAME --reactor MODULE.ATTRIBUTE}.

Only the ServiceMaker is here, so that listing twistd's plugins imports
nothing of txass; the options and the service are in L{txass._tap}.
"""

from twisted.application.service import ServiceMaker

txass_stage = ServiceMaker(
    "txass service stage",
    "txass._tap",
    "Serve the requests of a txass service with a handler on RabbitMQ",
    "ass",
)
