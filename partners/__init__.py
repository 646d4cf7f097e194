"""The partners: a payment gateway and a shipping carrier, as FastStream services.

In the system ordermesh models they are other companies' services that the saga's steps
depend on; here they are simulated, deterministically, so every path of the saga can be
driven for real (:mod:`partners.rules`). Each is a FastStream application of its own
(:mod:`partners.apps`), reached over NATS request/reply on ``partners.payment.*`` and
``partners.shipping.*``, idempotent on the id ordermesh sends and keeping its own record
in a SQLite file (:mod:`partners.ledger`), so a retried charge is charged once even
across a restart. ``ordermesh run partners`` runs both; ``ordermesh up`` starts them as
a process of their own.
"""
