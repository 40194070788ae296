"""The shop's accounts app: the views that log Customer.io events."""
