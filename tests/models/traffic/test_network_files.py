"""Networks from sensors files and edge lists: every given link kept, weights by the documented rule."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from models.exceptions import ModelError
from models.traffic.network_files import MIN_KERNEL_WEIGHT, build_network, read_sensor_table


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_distances_go_through_the_kernel_and_no_link_is_dropped(tmp_path: Path) -> None:
    lengths = [1, 2, 1, 1, 1, 1, 100]
    rows = "".join(f"{a},{b},{d}\n" for a, b, d in zip("abcdefg", "bcdefgh", lengths, strict=True))
    built = build_network("n", edges=_write(tmp_path / "e.csv", "source,target,distance\n" + rows))
    sigma = math.sqrt(np.mean(np.square(lengths)))  # root mean square of the given distances
    adjacency = built.network.adjacency
    assert built.network.sensor_ids == tuple("abcdefgh")
    assert adjacency[0, 1] == adjacency[1, 0] == pytest.approx(math.exp(-(1 / sigma) ** 2))
    assert adjacency[1, 2] == pytest.approx(math.exp(-(2 / sigma) ** 2))
    assert adjacency[6, 7] == pytest.approx(MIN_KERNEL_WEIGHT)  # far beyond sigma: floored, still a link
    assert built.links == 14 and (adjacency > 0).sum() == 14
    assert any("1 links are long for the kernel" in note for note in built.notes)


def test_weights_are_used_as_given_and_direction_is_kept(tmp_path: Path) -> None:
    edges = _write(tmp_path / "e.csv", "from,to,weight\na,b,0.5\nb,c,2\na,a,1\na,b,0.7\n")
    built = build_network("n", edges=edges, directed=True)
    adjacency = built.network.adjacency
    assert adjacency[0, 1] == pytest.approx(0.7) and adjacency[1, 0] == 0  # duplicate merged, larger kept
    assert adjacency[1, 2] == pytest.approx(2.0) and adjacency[2, 1] == 0
    assert np.diagonal(adjacency).sum() == 0
    note = built.notes[0]
    assert "4 links read" in note and "1 duplicates merged" in note and "1 self-loops skipped" in note


def test_edges_without_distance_or_weight_weigh_one_and_follow_the_sensors_order(tmp_path: Path) -> None:
    sensors = _write(tmp_path / "s.csv", "sensor_id,lat,lon\nz,42.0,-83.0\ny,42.01,-83.0\nx,42.02,-83.0\n")
    edges = _write(tmp_path / "e.csv", "source,target\nx,y\n")
    built = build_network("n", sensors=sensors, edges=edges)
    assert built.network.sensor_ids == ("z", "y", "x")
    assert built.network.adjacency[2, 1] == built.network.adjacency[1, 2] == 1.0
    assert built.network.adjacency[0].sum() == 0  # z has no link: it stands alone


def test_projected_coordinates_link_the_nearest_sensors(tmp_path: Path) -> None:
    rows = "".join(f"s{i},{1000.0 * i},0\n" for i in range(6))
    sensors = _write(tmp_path / "s.csv", "sensor_id,x,y\n" + rows)
    built = build_network("n", sensors=sensors, coordinates="metres", neighbors=1)
    adjacency = built.network.adjacency
    assert built.network.crs == "metres" and built.network.coords[1].tolist() == [1000.0, 0.0]
    assert (adjacency > 0).sum(axis=1).tolist() == [1, 2, 2, 2, 2, 1]  # a path: each to its nearest, symmetric
    np.testing.assert_allclose(adjacency[adjacency > 0], math.exp(-1))  # all 1 km: sigma = 1 km
    assert "nearest" in built.notes[0]


def test_without_links_or_coordinates_sensors_stand_alone() -> None:
    built = build_network("n", extra_ids=["b", "a"])
    assert built.network.sensor_ids == ("a", "b") and built.links == 0
    assert "no links" in built.notes[0]


@pytest.mark.parametrize(("sensors", "edges", "message"), [
    ("sensor_id,lat,lon\na,1,2\n", "source,target\na,q\n", r"e.csv, row 1: sensor 'q' is not in the sensors file"),
    (None, "source,target,weight\na,b,0\n",
     r"row 1: weight 0 must be a positive finite number \(remove the row to leave the link out\)"),
    (None, "source,target,distance\na,b,-1\n", r"row 1: distance -1 must be a non-negative"),
    (None, "a,b\nx,y\n", r"no column for the link's first sensor"),
    ("sensor_id,lat,lon\na,1,2\na,3,4\n", None, r"s.csv, row 2: sensor 'a' already on row 1"),
    ("sensor_id,lat,lon\na,4500000,300000\n", None, r"not a WGS84 latitude/longitude.*--coordinates metres"),
])
def test_file_errors_name_the_row_and_the_fix(tmp_path: Path, sensors: str | None, edges: str | None,
                                              message: str) -> None:
    with pytest.raises(ModelError, match=message):
        build_network("n", sensors=_write(tmp_path / "s.csv", sensors) if sensors else None,
                      edges=_write(tmp_path / "e.csv", edges) if edges else None, extra_ids=["a", "b"])


def test_coordinate_columns_must_match_the_coordinate_system(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.csv", "sensor_id,lat,lon\na,1,2\n")
    with pytest.raises(ModelError, match="pass --coordinates wgs84"):
        read_sensor_table(path, "metres")
    assert read_sensor_table(_write(tmp_path / "ids.csv", "id\na\nb\n")).coords is None
