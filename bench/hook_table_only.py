"""`mitmdump -s` script for the bench's `hook_table` case: llmgate's hook table alone.

Bare mitmdump with the table that llmgate installs on mitmproxy's addon manager
(addon/gateway/hook_table.py) and nothing else: the baseline that shows what llmgate's
own work costs once mitmproxy's hook dispatch is the same on both sides.
"""

from __future__ import annotations

from addon.gateway.hook_table import HookTable

addons = [HookTable()]
