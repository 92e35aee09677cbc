"""What every loader's validation split must be, checked on each loader's own small files."""

import pytest
import torch


def images(batches):
    xs, ys = zip(*(batch[:2] for batch in batches), strict=True)  # training batches carry ids too
    return torch.cat(xs), torch.cat(ys)


@pytest.fixture
def check_validation_split():
    """``build(**kw)`` builds the loader; ``total`` training images are in use. The split of ``held`` images is
    stratified, disjoint from training, the whole of what training left out, never augmented, and the same in
    every build (every part, engine and node builds its own) and for every member's stream."""

    def check(build, total: int, held: int):
        plain, augmented, again = build(augment=False), build(augment=True), build(augment=True)
        val_x, val_y = images(plain.eval_batches("val"))
        train_x, train_y = images(plain.train_batches(0))
        assert len(val_y) == held and len(train_y) == total - held
        # disjoint, and together the training images in use (images are random: their contents tell them apart)
        val_rows = {bytes(x.numpy().tobytes()) for x in val_x}
        train_rows = {bytes(x.numpy().tobytes()) for x in train_x}
        assert len(val_rows) == held and not val_rows & train_rows
        # stratified: no class's share of the split is off by more than one image
        counts = torch.bincount(torch.cat([val_y, train_y]))
        expected = counts.double() * held / total
        assert (torch.bincount(val_y, minlength=len(counts)).double() - expected).abs().max() <= 1
        # never augmented, the same in every build, whatever stream trained before
        list(augmented.train_batches(0, stream=1))
        for (xa, ya), (xb, yb), (xc, yc) in zip(
            plain.eval_batches("val"), augmented.eval_batches("val"), again.eval_batches("val"), strict=True
        ):
            assert torch.equal(xa, xb) and torch.equal(xa, xc) and torch.equal(ya, yb) and torch.equal(ya, yc)
        assert plain.num_eval_batches("val") == len(list(plain.eval_batches("val")))
        # each training image keeps its id every epoch, and the ids are those of the images training kept
        by_id = [{int(i): x for x, _, ids in plain.train_batches(epoch) for x, i in zip(x, ids)} for epoch in (0, 1)]
        assert by_id[0].keys() == by_id[1].keys() and len(by_id[0]) == total - held
        assert all(torch.equal(by_id[0][i], by_id[1][i]) for i in by_id[0])
        assert {bytes(x.numpy().tobytes()) for x in by_id[0].values()} == train_rows

    return check
