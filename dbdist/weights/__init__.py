"""Weight files: keras-cv .h5 layout, published sources."""
