"""`make test` runs on pytest-xdist workers with `--dist loadgroup`: tests in one xdist group share a worker,
so an expensive fixture (the session run, a small export's run) is built once. pytest 9.2 stopped honouring
the group suffix xdist 3.8 adds to node ids, and every group was silently split across workers (each
building the fixture again); this test fails if that happens again."""

import pytest


@pytest.mark.xdist_group("xdist_groups_are_kept")
def test_a_grouped_test_carries_its_group_in_its_node_id(request):
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not running under pytest-xdist --dist loadgroup")
    assert request.node.nodeid.endswith("@xdist_groups_are_kept"), request.node.nodeid
