"""Online price forecasting from closed candles: features, models (a river ensemble and a
PyTorch LSTM), prequential evaluation, shrinkage and confidence calibration. Pure logic.

Entry point: `engine.StreamPredictor`, one per (venue, symbol), fed with `features.Bar`s.
"""
