"""The known datasets of each source: the one place that names them (settings validation and download read it).

Imports nothing from elmrec, so `elmrec.config` can check a dataset name before any work starts.
"""

from __future__ import annotations

# SHA-256 of the authors' public copies (https://github.com/WangXFng/ELMRec, data/<name>/).
P5_SHA256: dict[str, dict[str, str]] = {
    "beauty": {
        "sequential.txt": "226cce9c3105299ca0db9615d7d3fb32b3175e90da43100ae352599f0f0107b8",
        "datamaps.json": "c3386147637538f6d97f7eafffeb4e7180daa0638875bc1d889bbee45ce241a8",
    },
    "sports": {
        "sequential.txt": "2a095e0648872beb9982408958290f5d655db5be2911c3756b5446de9f0b8de2",
        "datamaps.json": "4746e0d7dada225d8a2191f9002b6a0335c065f5ebbb71cd305f00e2fda9f124",
    },
    "toys": {
        "sequential.txt": "fa1cff57550387966440a93219753b97df62269455b3497612cdca3e8db0ceee",
        "datamaps.json": "a67fd09b5bbca12aea613015d9d1ed99610bb35015d3bbe8cd9e7a3eeda2c90c",
    },
}

AMAZON_CATEGORIES = (
    "Amazon_Instant_Video", "Apps_for_Android", "Automotive", "Baby", "Beauty", "Books", "CDs_and_Vinyl",
    "Cell_Phones_and_Accessories", "Clothing_Shoes_and_Jewelry", "Digital_Music", "Electronics",
    "Grocery_and_Gourmet_Food", "Health_and_Personal_Care", "Home_and_Kitchen", "Kindle_Store",
    "Movies_and_TV", "Musical_Instruments", "Office_Products", "Patio_Lawn_and_Garden", "Pet_Supplies",
    "Sports_and_Outdoors", "Tools_and_Home_Improvement", "Toys_and_Games", "Video_Games",
)  # fmt: skip
AMAZON_ALIASES = {"sports": "Sports_and_Outdoors", "toys": "Toys_and_Games"}


def amazon_category(dataset: str, category: str | None = None) -> str:
    """The SNAP category name (explicit `category`, an alias, or the dataset name), case-insensitively."""
    wanted = category or AMAZON_ALIASES.get(dataset, dataset)
    by_lower = {name.lower(): name for name in AMAZON_CATEGORIES}
    if wanted.lower() not in by_lower:
        raise ValueError(f"unknown Amazon 2014 category {wanted!r}; known: {', '.join(AMAZON_CATEGORIES)}")
    return by_lower[wanted.lower()]


def check_dataset(source: str, dataset: str, category: str | None = None) -> None:
    """Raise ValueError when `source` has no dataset of that name (a `local` folder may hold any)."""
    if source == "p5" and dataset not in P5_SHA256:
        raise ValueError(f"unknown p5 dataset {dataset!r}; known: {sorted(P5_SHA256)} "
                         "(other data: --source local --path DIR, or --source amazon2014)")
    if source == "amazon2014":
        amazon_category(dataset, category)
