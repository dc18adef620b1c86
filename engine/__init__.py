"""The model executor shared by prefill and decode workers."""
