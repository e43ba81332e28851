"""streams/ingest"""
