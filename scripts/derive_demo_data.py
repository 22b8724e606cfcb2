#!/usr/bin/env python3
"""Derive the recd demo dataset from UCI Online Retail.

Source: Daqing Chen, UCI Machine Learning Repository, "Online Retail",
CC BY 4.0, https://doi.org/10.24432/C5BW33 (541,909 invoice lines of a UK
online gift retailer, 2010-12-01 .. 2011-12-09).

Outputs (see data/demo/README.md for the full description):

* ``data/demo/retail.parquet`` -- one row per kept invoice line, columns
  ``invoice`` (utf8), ``user_id`` (utf8, e.g. ``"17850"``), ``item_id`` (utf8,
  upper-cased StockCode), ``quantity`` (int32, negative for cancellations),
  ``price`` (float64, UnitPrice in GBP), ``ts`` (timestamp[s], no time zone,
  InvoiceDate), ``country`` (utf8), ``cancelled`` (bool), all non-null.
  Sorted by ``ts`` then ``invoice`` (stable w.r.t. the source line order),
  zstd, 64Ki-row row groups.  Parquet has no seconds unit, so ``ts`` is
  physically INT64 TIMESTAMP(MILLIS, isAdjustedToUTC=false); the embedded
  ``ARROW:schema`` records timestamp[s] (some readers, incl. pyarrow >= 13,
  surface it as timestamp[ms] -- values are whole seconds either way).
* ``data/demo/items.csv`` -- the same three columns as CSV.
* ``data/demo/items.parquet`` -- ``item_id`` (utf8), ``category`` (utf8, a rough product
  type: the description's last word, see ``product_type``), ``description`` (utf8, the
  most frequent description of that code among the kept lines; ties broken
  alphabetically).

Cleaning rules, applied in this order (each line is counted under the first
rule that drops it):

1. drop lines without CustomerID -- they cannot be attributed to a user;
2. drop non-product StockCodes (postage, fees, adjustments, vouchers, ...):
   POST, DOT, M/m, D, C2, S, B, BANK CHARGES, AMAZONFEE, CRUK, PADS,
   gift vouchers ``gift_0001_*``, and two numeric codes that are services,
   not goods: 23444 ("Next Day Carriage") and 23574 ("PACKING CHARGE").
   (The DCGS* codes -- eBay / party-bag lines -- never carry a CustomerID,
   so rule 1 already removes them.)
3. drop lines with UnitPrice <= 0 (free replacements / stock adjustments).

Cancellations (InvoiceNo starting with ``C``, negative Quantity) are KEPT and
flagged with ``cancelled = true`` so that strategies such as returns or churn
can use them.  StockCodes are upper-cased (``85123a`` -> ``85123A``): the
lower-case suffix variants are the same products.  CustomerID ``17850.0`` is
rendered as the plain integer string ``17850``.

Usage:
    PYTHONPATH=.deps/pytools python3 scripts/derive_demo_data.py \
        [--src ../shared/data/online-retail/online_retail.csv.gz] [--out data/demo]
"""

from __future__ import annotations

import argparse
import os
import re
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

# ../shared beside the checkout, where the project's shared data lives.
DEFAULT_SRC = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "online-retail", "online_retail.csv.gz"
)

# Upper-cased StockCodes that are not products (fees, postage, adjustments).
NON_PRODUCT_CODES = {
    "POST",          # POSTAGE
    "DOT",           # DOTCOM POSTAGE
    "M",             # Manual (also lower-case "m")
    "D",             # Discount
    "C2",            # CARRIAGE
    "S",             # SAMPLES
    "B",             # Adjust bad debt
    "BANK CHARGES",  # Bank Charges
    "AMAZONFEE",     # AMAZON FEE
    "CRUK",          # CRUK Commission
    "PADS",          # PADS TO MATCH ALL CUSHIONS (0.001 GBP filler line)
    "23444",         # Next Day Carriage
    "23574",         # PACKING CHARGE
}
NON_PRODUCT_PREFIXES = ("GIFT_0001_",)  # Dotcomgiftshop gift vouchers

# All columns are non-null (written as REQUIRED parquet fields).
RETAIL_SCHEMA = pa.schema(
    [
        pa.field("invoice", pa.string(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("quantity", pa.int32(), nullable=False),
        pa.field("price", pa.float64(), nullable=False),
        pa.field("ts", pa.timestamp("s"), nullable=False),
        pa.field("country", pa.string(), nullable=False),
        pa.field("cancelled", pa.bool_(), nullable=False),
    ]
)
def product_type(description):
    """A rough product type: the description's last word of three or more letters
    ("WHITE HANGING HEART T-LIGHT HOLDER" -> "HOLDER"); "OTHER" if there is none. The data
    has no categories; this one is good enough to measure same-type crowding in a list."""
    words = [w for w in re.split(r"[^A-Z]+", str(description).upper()) if len(w) > 2]
    return words[-1] if words else "OTHER"


ITEMS_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("description", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
    ]
)


def is_non_product(codes: pd.Series) -> pd.Series:
    up = codes.str.upper()
    mask = up.isin(NON_PRODUCT_CODES)
    for p in NON_PRODUCT_PREFIXES:
        mask |= up.str.startswith(p)
    return mask


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", default=DEFAULT_SRC)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "data", "demo"))
    args = ap.parse_args(argv)

    df = pd.read_csv(
        args.src,
        dtype={
            "InvoiceNo": str,
            "StockCode": str,
            "Description": str,
            "Quantity": np.int64,
            "InvoiceDate": str,
            "UnitPrice": np.float64,
            "CustomerID": str,
            "Country": str,
        },
        keep_default_na=False,
        na_values={"CustomerID": [""], "Description": [""]},
    )
    total = len(df)
    print(f"source lines:                 {total:>8,}")

    m_nocust = df["CustomerID"].isna()
    print(f"dropped, no CustomerID:       {int(m_nocust.sum()):>8,}")
    df = df[~m_nocust]

    m_nonprod = is_non_product(df["StockCode"])
    dropped_codes = df.loc[m_nonprod, "StockCode"].str.upper().value_counts()
    print(f"dropped, non-product code:    {int(m_nonprod.sum()):>8,}")
    for code, n in dropped_codes.items():
        print(f"    {code:<14} {n:>6,}")
    df = df[~m_nonprod]

    m_price = df["UnitPrice"] <= 0
    print(f"dropped, UnitPrice <= 0:      {int(m_price.sum()):>8,}")
    df = df[~m_price].copy()

    cancelled = df["InvoiceNo"].str.startswith("C")
    # Sanity: cancellations carry negative quantities and vice versa.
    assert ((df["Quantity"] < 0) == cancelled).all(), "cancel flag / quantity sign mismatch"
    assert (df["Quantity"].abs() < 2**31).all()

    user = df["CustomerID"].astype(float)
    assert (user == user.round()).all()
    ts = pd.to_datetime(df["InvoiceDate"], format="%Y-%m-%d %H:%M:%S")

    out = pd.DataFrame(
        {
            "invoice": df["InvoiceNo"].to_numpy(dtype=object),
            "user_id": user.astype(np.int64).astype(str).to_numpy(dtype=object),
            "item_id": df["StockCode"].str.upper().to_numpy(dtype=object),
            "quantity": df["Quantity"].to_numpy(dtype=np.int32),
            "price": df["UnitPrice"].to_numpy(dtype=np.float64),
            "ts": ts.to_numpy(dtype="datetime64[s]"),
            "country": df["Country"].to_numpy(dtype=object),
            "cancelled": cancelled.to_numpy(dtype=bool),
        }
    )
    descr = df["Description"].to_numpy(dtype=object)
    order = np.lexsort((np.arange(len(out)), out["invoice"].to_numpy(dtype=str), out["ts"].to_numpy()))
    out = out.iloc[order].reset_index(drop=True)
    descr = descr[order]

    n_cancel = int(out["cancelled"].sum())
    print(f"kept lines:                   {len(out):>8,}  (of which cancellations: {n_cancel:,})")
    print(f"  users: {out['user_id'].nunique():,}  items: {out['item_id'].nunique():,}  "
          f"invoices: {out['invoice'].nunique():,}  countries: {out['country'].nunique():,}")
    print(f"  ts range: {out['ts'].min()} .. {out['ts'].max()}")

    # items: most frequent description per code (ties -> alphabetical).
    d = pd.DataFrame({"item_id": out["item_id"], "description": descr}).dropna()
    d["description"] = d["description"].str.strip()
    cnt = d.groupby(["item_id", "description"]).size().reset_index(name="n")
    cnt = cnt.sort_values(["item_id", "n", "description"], ascending=[True, False, True])
    items = cnt.drop_duplicates("item_id")[["item_id", "description"]].reset_index(drop=True)
    items["category"] = items["description"].map(product_type)
    all_items = pd.DataFrame({"item_id": np.sort(out["item_id"].unique())})
    items = all_items.merge(items, on="item_id", how="left")
    print(f"items.parquet rows:           {len(items):>8,}")

    os.makedirs(args.out, exist_ok=True)
    retail_path = os.path.join(args.out, "retail.parquet")
    items_path = os.path.join(args.out, "items.parquet")
    # replace_schema_metadata(None): drop the pandas-specific metadata blob.
    pq.write_table(
        pa.Table.from_pandas(out, schema=RETAIL_SCHEMA, preserve_index=False).replace_schema_metadata(None),
        retail_path,
        compression="zstd",
        compression_level=9,
        row_group_size=65536,
        data_page_version="1.0",
    )
    pq.write_table(
        pa.Table.from_pandas(items, schema=ITEMS_SCHEMA, preserve_index=False).replace_schema_metadata(None),
        items_path,
        compression="zstd",
        compression_level=9,
        data_page_version="1.0",
    )
    # The same item list as CSV: a CSV input example, and the demo's description lookup.
    items_csv = os.path.join(args.out, "items.csv")
    items[["item_id", "description", "category"]].to_csv(items_csv, index=False, lineterminator="\n")
    for p in (retail_path, items_path, items_csv):
        print(f"wrote {os.path.normpath(p)} ({os.path.getsize(p):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
