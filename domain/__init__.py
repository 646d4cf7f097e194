"""Pure domain of ordermesh: messages, aggregates and the event-store port.

Nothing in this package performs I/O, so handlers, projections and sagas can be
tested without a broker or a database.
"""
