"""DXLink (dxFeed) protocol, symbols and the reconnecting client."""
