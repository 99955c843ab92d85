"""Sample locations, spatial splits, crops with augmentation, triplet datasets."""
