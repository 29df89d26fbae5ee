"""Entry script for `mitmdump -s`: loads the installed `addon` package.

mitmproxy puts this file's directory on sys.path; keeping the script outside
`addon/` means every llmgate module loads under exactly one import name.
"""

from addon.gateway import addons

__all__ = ["addons"]
