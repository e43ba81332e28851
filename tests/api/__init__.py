"""tests/api"""
