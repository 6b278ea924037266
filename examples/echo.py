"""
The echo stage of the txass walkthrough.

Serve it with:

    twistd -n ass --service echo --reactor examples.echo.Echo
"""

import txass


class Echo:
    """
    Reply to every method with the method's name and its input.

    twistd creates a fresh instance for each request.  Requests can call
    only the methods marked with @txass.expose.
    """

    @txass.expose
    def foo(self, input):
        return ["server", "foo", input]

    @txass.expose
    def bar(self, input):
        return ["server", "bar", input]

    @txass.expose
    def whoami(self, input):
        request = txass.current_request()
        return {"message_id": request.message_id, "meta": request.meta, "redelivered": request.redelivered}
