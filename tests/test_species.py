import pytest

from mushroom.species import EDIBILITY_VALUES, load_catalog, parse_catalog


def test_packaged_catalog_has_51_species_with_valid_edibility():
    catalog = load_catalog()
    assert len(catalog) == 51
    assert {s.edibility for s in catalog} <= set(EDIBILITY_VALUES)
    assert catalog.species[0].scientific_name == "Amanita muscaria"
    assert catalog.resolve("Amanita phalloides").edibility == "deadly"


def test_lookup_by_name_slug_and_taxon_id():
    catalog = load_catalog()
    fly = catalog.resolve("Amanita muscaria")
    assert catalog.find("amanita_muscaria") == fly
    assert catalog.find(str(fly.taxon_id)) == fly
    assert catalog.find(fly.taxon_id) == fly
    assert catalog.find("Nonexistent mushroom") is None
    with pytest.raises(KeyError, match="unknown species 'Nonexistent'"):
        catalog.resolve("Nonexistent")


def test_subset_keeps_catalog_order_not_request_order():
    catalog = load_catalog()
    sub = catalog.subset(["Boletus edulis", "Amanita muscaria"])
    assert [s.scientific_name for s in sub] == ["Amanita muscaria", "Boletus edulis"]
    assert sub.index_of(catalog.resolve("Boletus edulis").taxon_id) == 1


def test_csv_round_trip():
    catalog = load_catalog()
    again = parse_catalog(catalog.to_csv())
    assert again.species == catalog.species


@pytest.mark.parametrize(
    "text, message",
    [
        ("taxon_id,scientific_name,common_name,edibility,caution\n1,A b,A,tasty,\n", "edibility 'tasty'"),
        ("taxon_id,scientific_name,common_name,edibility,caution\nx,A b,A,edible,\n", "not an integer"),
        ("taxon_id,scientific_name\n1,A b\n", "missing columns"),
        ("taxon_id,scientific_name,common_name,edibility,caution\n1,A b,A,edible,\n1,C d,C,edible,\n", "duplicate"),
    ],
)
def test_bad_catalog_rows_are_named(text, message):
    with pytest.raises(ValueError, match=message):
        parse_catalog(text)
