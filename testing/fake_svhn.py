"""A fake SVHN (format 1) on disk, in the exact layout the data loaders read: PNGs and a MATLAB
v7.3 ``digitStruct.mat`` per split. Needs h5py and Pillow (the tests that use it skip without them)."""
import h5py
import numpy as np
from PIL import Image


def write_digit_struct(path, entries):
    """entries: [(name, [(label, left, top, width, height), ...])] as MATLAB v7.3 writes them."""
    with h5py.File(path, "w") as f:
        refs = f.create_group("#refs#")
        counter = iter(range(10 ** 6))

        def new(data, dtype=None):
            d = refs.create_dataset(f"r{next(counter)}", data=data, dtype=dtype)
            return d.ref

        name_refs, bbox_refs = [], []
        for name, boxes in entries:
            name_refs.append(new(np.array([[ord(c)] for c in name], dtype=np.uint16)))
            g = refs.create_group(f"g{next(counter)}")
            for j, key in enumerate(("label", "left", "top", "width", "height")):
                vals = [float(b[j]) for b in boxes]
                if len(vals) == 1:
                    g.create_dataset(key, data=np.array([[vals[0]]]))
                else:
                    g.create_dataset(key, data=np.array([[new(np.array([[v]]))] for v in vals]), dtype=h5py.ref_dtype)
            bbox_refs.append(g.ref)
        ds = f.create_group("digitStruct")
        ds.create_dataset("name", data=np.array([[r] for r in name_refs]), dtype=h5py.ref_dtype)
        ds.create_dataset("bbox", data=np.array([[r] for r in bbox_refs]), dtype=h5py.ref_dtype)


def fake_svhn(root, n_train=12, n_test=4):
    for sub, n in (("train", n_train), ("test", n_test)):
        d = root / sub
        d.mkdir(parents=True)
        entries = []
        for i in range(n):
            w, h = 80 + 3 * i, 40 + i
            img = np.zeros((h, w, 3), np.uint8)
            k = 1 + i % 6  # 6 digits: dropped
            boxes = []
            for j in range(k):
                left, top = 5 + 10 * j, 8
                img[top:top + 20, left:left + 8] = 200
                boxes.append(((i + j) % 10 + (10 if (i + j) % 10 == 0 else 0), left, top, 8, 20))
            Image.fromarray(img).save(d / f"{i + 1}.png")
            entries.append((f"{i + 1}.png", boxes))
        write_digit_struct(d / "digitStruct.mat", entries)
    return root
