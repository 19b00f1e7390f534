"""Tools to look into dbdist record directories (they share dbdist.data.features with the writer and reader)."""
