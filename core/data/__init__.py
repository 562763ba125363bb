"""Sources -> formats -> Conversation -> rendered text + loss mask -> mix folder."""
