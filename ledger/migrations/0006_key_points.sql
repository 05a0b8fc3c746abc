-- An organization's key may be narrowed to some of its trade points (a shop manager's key):
-- with none listed it reaches the whole organization.
CREATE TABLE api_key_points (
    key_id         bigint NOT NULL REFERENCES api_keys (id),
    trade_point_id bigint NOT NULL REFERENCES trade_points (id),
    PRIMARY KEY (key_id, trade_point_id)
);
