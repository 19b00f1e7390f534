"""dbdist.data.images: listing, decoding every odd image kind, cropping, writing; and demo images."""

import io
import logging as std_logging

import numpy as np
import pytest
from PIL import Image

from dbdist.data import images
from dbdist.demo_images import write_demo_images

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
# JPEG is lossy: a flat colour comes back within a few levels, so compare with this margin.
JPEG_TOL = 12


def _solid(size, colour, mode="RGB"):
    return Image.new(mode, size, colour)


def _save(img, path, **kwargs):
    img.save(path, **kwargs)
    return str(path)


# --- list_images -----------------------------------------------------------------------

def test_list_images_sorted_case_insensitive_skips_hidden_and_subdirs(tmp_path):
    for name in ("b.PNG", "a.jpg", "c.JpEg", "d.webp", "e.bmp"):
        _solid((4, 4), RED).save(tmp_path / name, format={"PNG": "PNG", "JPG": "JPEG", "PEG": "JPEG",
                                                          "EBP": "WEBP", "BMP": "BMP"}[name[-3:].upper()])
    (tmp_path / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.txt").write_text("ignored")
    names = [p.split("/")[-1] for p in images.list_images(tmp_path)]
    assert names == ["a.jpg", "b.PNG", "c.JpEg", "d.webp", "e.bmp"]
    assert images.list_images(tmp_path)[0] == str(tmp_path / "a.jpg")


def test_list_images_names_non_image_file(tmp_path):
    _save(_solid((4, 4), RED), tmp_path / "a.png")
    (tmp_path / "notes.json").write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.json.*\.jpg/\.jpeg/\.png/\.webp/\.bmp"):
        images.list_images(tmp_path)


def test_list_images_empty_dir(tmp_path):
    with pytest.raises(ValueError, match=rf"{tmp_path} contains no images; expected \.jpg"):
        images.list_images(tmp_path)


def test_list_images_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        images.list_images(tmp_path / "nope")


# --- load_image ------------------------------------------------------------------------

def test_exif_orientation_applied(tmp_path):
    # Stored 40 wide x 20 high, red left half, blue right half. Orientation 6 means
    # "rotate 90 degrees clockwise to display": displayed 20 x 40, red on top.
    img = Image.new("RGB", (40, 20), BLUE)
    img.paste(RED, (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(img, tmp_path / "rot.jpg", format="JPEG", exif=exif.tobytes(), quality=95)
    out = images.load_image(path, 20).astype(int)
    assert out.shape == (20, 20, 3)
    # The centre square of the displayed image is the lower part of red over the top of blue.
    assert np.abs(out[2, 10] - RED).max() < JPEG_TOL * 3
    assert np.abs(out[17, 10] - BLUE).max() < JPEG_TOL * 3
    # Ignoring the tag would give red on the left and blue on the right instead.
    assert np.abs(out[10, 2] - out[10, 17]).max() < JPEG_TOL * 3


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_composited_on_white(tmp_path, mode):
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # transparent black
    rgba.paste((255, 0, 0, 255), (0, 0, 4, 8))      # opaque red on the left half
    if mode == "LA":
        img = rgba.convert("LA")
    elif mode == "P":
        img = rgba.convert("P")
        img.info["transparency"] = img.getpixel((7, 7))
    else:
        img = rgba
    out = images.load_image(_save(img, tmp_path / "alpha.png"), 8)
    np.testing.assert_array_equal(out[:, 6:], 255)  # transparent -> white, not black
    # LA keeps only luminance, so its opaque half is red's grey level (76), not red.
    expected_left = (76, 76, 76) if mode == "LA" else RED
    np.testing.assert_array_equal(out[:, :2], np.broadcast_to(expected_left, (8, 2, 3)))


def test_grayscale_becomes_rgb(tmp_path):
    out = images.load_image(_save(_solid((6, 6), 100, "L"), tmp_path / "g.png"), 6)
    assert out.dtype == np.uint8 and out.shape == (6, 6, 3)
    np.testing.assert_array_equal(out, 100)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = _save(_solid((8, 8), (0, 255, 255, 0), "CMYK"), tmp_path / "cmyk.jpg", format="JPEG", quality=95)
    out = images.load_image(path, 8).astype(int)
    assert np.abs(out - RED).max() < JPEG_TOL


def test_16bit_png_scaled_not_clipped(tmp_path):
    values = np.array([[0, 100 * 257, 200 * 257, 65535]], dtype=np.uint16).repeat(4, axis=0)
    img = Image.fromarray(values)
    assert img.mode == "I;16"
    out = images.load_image(_save(img, tmp_path / "deep.png"), 4)
    # Clipping would turn every non-zero value into 255.
    np.testing.assert_array_equal(out[0, :, 0], [0, 100, 200, 255])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_center_crop_keeps_the_centre(tmp_path):
    img = Image.new("RGB", (30, 10), RED)
    img.paste(GREEN, (10, 0, 20, 10))
    img.paste(BLUE, (20, 0, 30, 10))
    out = images.load_image(_save(img, tmp_path / "wide.png"), 10)
    np.testing.assert_array_equal(out, np.broadcast_to(GREEN, (10, 10, 3)))
    tall = Image.new("RGB", (10, 30), RED)
    tall.paste(BLUE, (0, 10, 10, 20))
    out = images.load_image(_save(tall, tmp_path / "tall.png"), 5)  # crop then downscale
    assert out.shape == (5, 5, 3)
    np.testing.assert_array_equal(out, np.broadcast_to(BLUE, (5, 5, 3)))


def test_upscaling_warns_with_name_and_size(tmp_path, caplog):
    path = _save(_solid((12, 16), GREEN), tmp_path / "small.png")
    with caplog.at_level(std_logging.WARNING, logger="absl"):
        out = images.load_image(path, 32)
    assert out.shape == (32, 32, 3)
    assert any("small.png" in r.getMessage() and "12x16" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(std_logging.WARNING, logger="absl"):
        images.load_image(path, 8)
    assert not [r for r in caplog.records if "small.png" in r.getMessage()]


def test_corrupt_file_names_the_file(tmp_path):
    path = tmp_path / "bad.png"
    path.write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match=r"bad\.png: cannot decode image"):
        images.load_image(path, 8)


def test_truncated_jpeg_names_the_file(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ValueError, match=r"cut\.jpg: cannot decode image"):
        images.load_image(path, 32)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="gone.png"):
        images.load_image(tmp_path / "gone.png", 8)


# --- writing ---------------------------------------------------------------------------

def test_save_png_round_trip_and_no_temp_left(tmp_path):
    image = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = tmp_path / "out.png"
    images.save_png(image, path)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), image)
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]
    with pytest.raises(ValueError, match="float32"):
        images.save_png(image.astype(np.float32), path)


def test_make_grid_tiles_and_pads_black():
    tiles = [np.full((2, 3, 3), v, np.uint8) for v in (10, 20, 30)]
    grid = images.make_grid(tiles, columns=2)
    assert grid.shape == (4, 6, 3)
    assert (grid[:2, :3] == 10).all() and (grid[:2, 3:] == 20).all()
    assert (grid[2:, :3] == 30).all() and (grid[2:, 3:] == 0).all()
    assert images.make_grid(tiles, columns=5).shape == (2, 9, 3)
    with pytest.raises(ValueError, match="none"):
        images.make_grid([], 2)


def test_demo_images_deterministic_and_striped(tmp_path):
    inst, cls = write_demo_images(tmp_path / "a" / "i", tmp_path / "a" / "c", num_instance=2, num_class=3, size=32)
    again, _ = write_demo_images(tmp_path / "b" / "i", tmp_path / "b" / "c", num_instance=2, num_class=3, size=32)
    assert len(inst) == 2 and len(cls) == 3
    assert images.list_images(tmp_path / "a" / "c") == cls
    for p, q in zip(inst, again):
        np.testing.assert_array_equal(images.load_image(p, 32), images.load_image(q, 32))
    # The subject is red and white; a different seed gives different pictures.
    other, _ = write_demo_images(tmp_path / "c" / "i", tmp_path / "c" / "c", num_instance=1, num_class=0,
                                 size=32, seed=1)
    first = images.load_image(inst[0], 32).astype(int)
    assert not np.array_equal(first, images.load_image(other[0], 32))
    reddish = (first[..., 0] > 180) & (first[..., 1] < 80)
    whitish = first.min(axis=-1) > 200
    assert reddish.sum() > 10 and whitish.sum() > 10
