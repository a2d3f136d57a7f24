"""LINE in the app (issue 16): the webhook LINE calls, and the link between a person and their LINE account."""
