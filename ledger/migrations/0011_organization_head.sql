-- The head of the organization (issue 13: the cabinet shows and edits the organization's
-- details, the head among them): a name as the taxpayer writes it, bounded as every other name
-- the cabinet keeps. Existing organizations have none yet ('').
ALTER TABLE organizations
    ADD COLUMN head text NOT NULL DEFAULT ''
    CONSTRAINT organizations_head_check CHECK (length(head) <= 200);
