"""The report of a site and what it holds: HTML, GIS products, quicklook figures."""
