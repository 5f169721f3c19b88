"""nann.evaluate.metrics on hand-made cases; every expected value is worked out by hand in the comments."""
import numpy as np
import pytest

from nann.evaluate import metrics


def test_two_users_by_hand():
    exact = np.array([[1, 2, 3], [4, 5, 6]])
    found = np.array([[3, 2, 9], [4, 7, 8]])
    m = metrics(found, exact, targets=np.array([2, 6], np.int32), scored=np.array([10, 20]), num_items=100)
    assert m == pytest.approx({
        "recall_all": 1.0,            # 2 in exact[0], 6 in exact[1]
        "recall_retrieval": 0.5,      # 2 in found[0]; 6 not in found[1]
        "recall_delta": 0.5,          # (1 - 0.5) / 1
        "coverage": 0.5,              # user 0: {2, 3} of 3 → 2/3; user 1: {4} of 3 → 1/3; mean 1/2
        "scored_fraction": 0.15,      # mean(10, 20) / 100
        "items_scored": 15.0,
        "users": 2,
    })


def test_order_within_the_top_m_does_not_matter():
    m = metrics(np.array([[3, 1, 2]]), np.array([[1, 2, 3]]), np.array([1]), np.array([5]), 10)
    assert (m["recall_all"], m["recall_retrieval"], m["coverage"]) == (1.0, 1.0, 1.0)


def test_tie_at_the_cut_counts_as_a_miss_and_recall_delta_is_zero_without_recall_all():
    # items 3 and 9 tie for rank 3: brute force kept 3, the search kept 9, and the target is 9
    m = metrics(np.array([[1, 2, 9]]), np.array([[1, 2, 3]]), np.array([9]), np.array([5]), 10)
    assert m["coverage"] == pytest.approx(2 / 3)
    assert (m["recall_all"], m["recall_retrieval"]) == (0.0, 1.0)
    assert m["recall_delta"] == 0.0  # (0 - 1) / 0 is undefined: reported as 0, not -inf or NaN


def test_fewer_than_m_results_are_padded_with_minus_one():
    # a catalogue of two items and M = 3: brute force holds both, the search found one
    exact = np.array([[5, 6, -1], [5, 6, -1]])
    found = np.array([[5, -1, -1], [6, 5, -1]])
    m = metrics(found, exact, np.array([6, 6]), np.array([1, 2]), 2)
    assert m["recall_all"] == 1.0
    assert m["recall_retrieval"] == 0.5   # user 0 lacks 6, user 1 has it
    assert m["coverage"] == 0.75          # of the 2 real items: 1/2 and 2/2 (padding is no item)
    assert m["scored_fraction"] == 0.75   # mean(1, 2) / 2


@pytest.mark.parametrize("target", [-1, 999])
def test_a_target_outside_the_catalogue_is_never_a_hit(target):
    # -1 must not match the -1 padding of short lists; 999 is in no list
    exact = np.array([[5, 6, -1]])
    found = np.array([[5, -1, -1]])
    m = metrics(found, exact, np.array([target]), np.array([2]), 2)
    assert (m["recall_all"], m["recall_retrieval"], m["recall_delta"]) == (0.0, 0.0, 0.0)
    assert m["coverage"] == 0.5


def test_zero_users():
    empty = np.zeros((0, 3), np.int64)
    m = metrics(empty, empty, np.zeros(0, np.int32), np.zeros(0, np.int64), 100)
    assert m == {"recall_all": 0.0, "recall_retrieval": 0.0, "recall_delta": 0.0, "coverage": 0.0,
                 "scored_fraction": 0.0, "items_scored": 0.0, "users": 0}
