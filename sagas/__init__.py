"""Process managers (the order fulfilment saga) — arrives with its own issue."""
