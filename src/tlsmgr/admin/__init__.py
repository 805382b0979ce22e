"""tlsmgr-ctl: client, watch, install, --check; imports any layer and the daemon."""
