"""
White-box tests of the Linux accelerator (L{txsockproxy._fast}), apart from
the core's tests.
"""
