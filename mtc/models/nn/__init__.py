"""Network blocks shared by the families' ``net`` modules.

Each submodule imports torch at the top; this package itself imports nothing, so naming it
costs a family package nothing.
"""
