"""Translation between wire protocols, through the canonical form.

A call whose route's provider speaks another protocol than the caller is
encoded for the provider from its canonical request, and the provider's reply
(buffered, streamed event by event, or an error) is decoded into canonical form
and encoded back in the caller's protocol. Same-protocol calls never come here:
their bytes are forwarded as they are.
"""
