"""
Programs that use L{txass.blocking} in a process of their own, run by
C{tests.test_blocking}.  Each one connects to C{$TXASS_BROKER_URL}.
"""
