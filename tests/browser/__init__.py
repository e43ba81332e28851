"""The live page (/app) in headless Chromium."""
