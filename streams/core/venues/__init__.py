"""streams/core/venues"""
