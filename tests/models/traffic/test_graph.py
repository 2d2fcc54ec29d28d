"""Sensor networks: file formats, DCRNN kernel and the renormalized adjacency, by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.exceptions import ModelError
from models.traffic.graph import EARTH_RADIUS_KM, SensorNetwork, haversine_km, normalized_adjacency

PATH3 = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=np.float32)


def test_normalized_adjacency_of_a_path_by_hand() -> None:
    # A + I = [[1,1,0],[1,1,1],[0,1,1]], degrees 2, 3, 2: entry ij = 1 / sqrt(d_i d_j).
    expected = np.array([[1 / 2, 1 / math.sqrt(6), 0],
                         [1 / math.sqrt(6), 1 / 3, 1 / math.sqrt(6)],
                         [0, 1 / math.sqrt(6), 1 / 2]])
    np.testing.assert_allclose(normalized_adjacency(PATH3), expected, rtol=1e-6)


def test_normalized_adjacency_weighted_by_hand() -> None:
    # A + I = [[1, 3], [3, 1]], degrees 4 and 4: every entry divided by 4.
    adj = np.array([[0, 3], [3, 0]], dtype=np.float32)
    np.testing.assert_allclose(normalized_adjacency(adj), [[0.25, 0.75], [0.75, 0.25]], rtol=1e-6)


@pytest.mark.parametrize("bad", [np.zeros((2, 3)), -np.ones((2, 2))])
def test_normalized_adjacency_refuses_bad_input(bad: np.ndarray) -> None:
    with pytest.raises(ModelError):
        normalized_adjacency(bad)


def test_haversine_one_degree_of_latitude() -> None:
    assert haversine_km(0.0, 0.0, 1.0, 0.0) == pytest.approx(EARTH_RADIUS_KM * math.pi / 180)


def _equator_network(**options: float) -> SensorNetwork:
    coords = np.array([[0.0, 0.0], [0.0, 0.1], [0.0, 0.3]])
    return SensorNetwork.from_coordinates("eq", ["a", "b", "c"], coords, **options)


def test_from_coordinates_dcrnn_kernel_by_hand() -> None:
    km_per_degree = EARTH_RADIUS_KM * math.pi / 180
    d_ab, d_bc, d_ac = 0.1 * km_per_degree, 0.2 * km_per_degree, 0.3 * km_per_degree
    w_ab, w_bc, w_ac = (math.exp(-(d / 20.0) ** 2) for d in (d_ab, d_bc, d_ac))
    assert w_ac < 0.1 < w_bc  # the a-c edge falls under the threshold
    expected = np.array([[0, w_ab, 0], [w_ab, 0, w_bc], [0, w_bc, 0]])
    network = _equator_network(sigma_km=20.0, threshold=0.1)
    np.testing.assert_allclose(network.adjacency, expected, rtol=1e-5)
    assert network.adjacency.dtype == np.float32


def test_from_coordinates_default_sigma_is_std_of_distances() -> None:
    km_per_degree = EARTH_RADIUS_KM * math.pi / 180
    distances = np.array([0.1, 0.2, 0.3]) * km_per_degree
    sigma = distances.std()
    network = _equator_network(threshold=0.0)
    assert network.adjacency[0, 1] == pytest.approx(math.exp(-(distances[0] / sigma) ** 2), rel=1e-5)
    assert network.adjacency[0, 2] == pytest.approx(math.exp(-(distances[2] / sigma) ** 2), rel=1e-5)


def test_from_coordinates_nearest_neighbours_is_sparse_and_symmetric() -> None:
    rng = np.random.default_rng(0)
    coords = np.column_stack([34 + rng.random(50) * 0.2, -118 + rng.random(50) * 0.2])
    network = SensorNetwork.from_coordinates("knn", [str(i) for i in range(50)], coords,
                                             threshold=0.0, max_neighbors=3)
    degree = (network.adjacency > 0).sum(axis=1)
    assert degree.min() >= 3 and degree.max() < 50
    np.testing.assert_array_equal(network.adjacency, network.adjacency.T)
    assert np.all(np.diag(network.adjacency) == 0)


def test_from_files_with_header_line_of_ids(tmp_path) -> None:
    np.savetxt(tmp_path / "adj.csv", PATH3, delimiter=",")
    (tmp_path / "speed.csv").write_text("11,22,33\n60,61,62\n")
    network = SensorNetwork.from_files("n", tmp_path / "adj.csv", tmp_path / "speed.csv")
    assert network.sensor_ids == ("11", "22", "33") and network.coords is None
    assert network.index_of("33") == 2 and network.get_index("44") is None
    np.testing.assert_array_equal(network.adjacency, PATH3)


def test_from_files_with_sensor_table(tmp_path) -> None:
    np.savetxt(tmp_path / "adj.csv", PATH3, delimiter=",")
    (tmp_path / "sensors.csv").write_text("sensor_id,lat,lon\na,34.1,-118.2\nb,34.2,-118.3\n"
                                          "c,34.3,-118.4\n")
    network = SensorNetwork.from_files("n", tmp_path / "adj.csv", tmp_path / "sensors.csv")
    assert network.sensor_ids == ("a", "b", "c")
    np.testing.assert_allclose(network.coords[1], [34.2, -118.3])


def test_from_files_without_sensors_numbers_them(tmp_path) -> None:
    np.savetxt(tmp_path / "adj.csv", PATH3, delimiter=",")
    assert SensorNetwork.from_files("n", tmp_path / "adj.csv").sensor_ids == ("0", "1", "2")


def test_mismatches_are_model_errors(tmp_path) -> None:
    with pytest.raises(ModelError, match="expected \\(2, 2\\)"):
        SensorNetwork(name="n", sensor_ids=("a", "b"), coords=None, adjacency=PATH3)
    with pytest.raises(ModelError, match="not unique"):
        SensorNetwork(name="n", sensor_ids=("a", "a", "b"), coords=None, adjacency=PATH3)
    network = SensorNetwork(name="n", sensor_ids=("a", "b", "c"), coords=None, adjacency=PATH3)
    with pytest.raises(ModelError, match="'z'"):
        network.index_of("z")
    (tmp_path / "adj.csv").write_text("1,0\n0,1\n1,1\n")
    with pytest.raises(ModelError, match="square"):
        SensorNetwork.from_files("n", tmp_path / "adj.csv")


def test_fingerprint_tracks_ids_and_weights() -> None:
    a = SensorNetwork(name="n", sensor_ids=("a", "b", "c"), coords=None, adjacency=PATH3)
    b = SensorNetwork(name="m", sensor_ids=("a", "b", "c"), coords=None, adjacency=PATH3.copy())
    c = SensorNetwork(name="n", sensor_ids=("a", "b", "c"), coords=None, adjacency=PATH3 * 2)
    assert a.fingerprint == b.fingerprint != c.fingerprint
