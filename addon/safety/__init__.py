"""Safety: secrets, PII and jailbreak phrases in what passes the gateway.

`detectors` holds the patterns and their checks, `scanner` runs them over a text and
`stream_redactor` over a growing one; `screening` applies the policy's actions to a
request (and its findings rows), `stream_guard` to a streamed reply; `settings` is the
policy's `safety:` section.
"""
