"""Traces, metrics and the log context: how an operator follows one order.

Kept apart from the message path's logic: the broker, the handlers and the saga call
the few helpers here, which cost nothing when tracing is off.
"""
