import numpy as np

from mcls.labels import age_band, class_names, decode, encode


def test_class_algebra_round_trips_all_18_classes():
    m, g, a = np.meshgrid(range(3), range(2), range(3), indexing="ij")
    labels = encode(m.ravel(), g.ravel(), a.ravel())
    assert sorted(labels) == list(range(18))
    dm, dg, da = decode(labels)
    assert (dm == m.ravel()).all() and (dg == g.ravel()).all() and (da == a.ravel()).all()


def test_competition_examples():
    assert encode(0, 0, 0) == 0  # wear, male, <30
    assert encode(1, 1, 2) == 11  # incorrect, female, >=60
    assert encode(2, 1, 1) == 16  # not wear, female, 30-59


def test_age_band_edges():
    assert list(age_band([18, 29, 30, 59, 60, 95])) == [0, 0, 1, 1, 2, 2]
    assert list(age_band([57, 58, 59], (30, 58))) == [1, 2, 2]


def test_class_names():
    names = class_names()
    assert len(names) == 18 and names[0] == "wear/male/<30" and names[17] == "not wear/female/>=60"
