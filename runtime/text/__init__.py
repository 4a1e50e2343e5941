"""Text: incremental tokenisation (a character edit -> one token splice), the character window, content-
defined chunking.
"""
