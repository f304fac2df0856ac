"""REST APIs: declared resources, landed raw in bronze, parsed downstream into typed records.

    from headwater import table
    from headwater.sources.rest import Incremental, Resource, parser, rest
    from headwater.sources.rest.auth import bearer
    from headwater.sources.rest.paginate import cursor

    orders = Resource(
        "orders", endpoint="/orders", connection="shop_api", auth=bearer(),
        paginator=cursor("meta.next_cursor", param="cursor"), records="data",
        incremental=Incremental("updated_since", field="updated_at"),
        columns={"updated_at": "timestamp"},
    )
    table("bronze.orders_raw", source=rest(orders), strategy="append")
    table("bronze.orders", inputs=["bronze.orders_raw"], strategy="merge",
          keys=["id"], version_column="updated_at")(parser(orders))

The source's table holds every response page as received (`RAW_SCHEMA`), so a
changed parser re-derives history (`headwater run bronze.orders --full-refresh`).
See docs/sources-rest.md.
"""

from . import auth, paginate
from .auth import api_key, basic, bearer, oauth2_client_credentials
from .declarative import load_resources, parse_resources
from .paginate import cursor, link_header, next_url, offset, page_number, single
from .parse import parser, records
from .resource import Incremental, Parent, Resource, Retry, parent
from .source import RAW_SCHEMA, RestSource, rest

__all__ = [
    "RAW_SCHEMA",
    "Incremental",
    "Parent",
    "Resource",
    "RestSource",
    "Retry",
    "api_key",
    "auth",
    "basic",
    "bearer",
    "cursor",
    "link_header",
    "load_resources",
    "next_url",
    "oauth2_client_credentials",
    "offset",
    "page_number",
    "paginate",
    "parent",
    "parse_resources",
    "parser",
    "records",
    "rest",
    "single",
]
