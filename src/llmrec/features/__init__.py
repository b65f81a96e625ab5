"""Item/user features computed once into memory-mapped arrays (the feature store) and the encoders behind them."""
