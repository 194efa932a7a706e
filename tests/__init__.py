"""
Tests for txsockproxy: run by C{pytest} (the README's command) or by
C{trial tests}, from the repository root.
"""
