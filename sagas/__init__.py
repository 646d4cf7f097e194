"""Process managers: the order fulfilment saga (state machine, policy, runner, inbox)."""
