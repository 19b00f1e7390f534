"""The DreamBooth paper's subject and prompt fidelity scores (DINO, CLIP-I, CLIP-T) for `dbdist.evaluate`."""
