"""siamsearch.core.lazy: the packages' lazy names resolve, are cached, and unknown names raise AttributeError."""
import pytest

import siamsearch
import siamsearch.gallery


def test_lazy_names_resolve_and_are_cached():
    from siamsearch.gallery.gallery import Gallery

    assert siamsearch.gallery.Gallery is Gallery and siamsearch.Gallery is Gallery
    assert "Gallery" in vars(siamsearch.gallery)  # cached on the package after the first access


def test_unknown_names_raise_attribute_error_and_submodules_still_import():
    with pytest.raises(AttributeError, match="'siamsearch.gallery' has no attribute 'Nope'"):
        siamsearch.gallery.Nope
    with pytest.raises(AttributeError, match="'siamsearch' has no attribute 'nope'"):
        siamsearch.nope
    from siamsearch.gallery import scan  # a submodule, not a lazy name

    assert scan.__name__ == "siamsearch.gallery.scan"
