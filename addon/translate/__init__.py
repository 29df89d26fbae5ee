"""Translation between wire protocols, through the canonical form.

A call whose route's provider speaks another protocol than the caller is
encoded for the provider from its canonical request, and the provider's reply
(buffered, streamed event by event, or an error) is decoded into canonical form
and encoded back in the caller's protocol. Same-protocol calls never come here:
their bytes are forwarded as they are.

This package is the pipeline stage: `plan` encodes the call, `reply` translates
what comes back, `registry` finds each protocol's codec. The codecs themselves
live with their wire formats (`addon.protocols.<format>.codec`, the interface
and the delta vocabulary in `addon.protocols.codec` and `addon.protocols.deltas`).
"""
