//! Security groups: create, get, list by name, upsert by `uniqueName`, `PATCH` with
//! `members@odata.bind`, members and `memberOf` pages, adds and removals.
use super::*;

/// Graph's most members one request may bind (`members@odata.bind`): "up to 20 members can be
/// added in a single request" (microsoft-graph-docs-contrib
/// `api-reference/v1.0/api/group-post-members.md`, example 2; `group-upsert.md`, example 2).
pub const MAX_MEMBER_BINDS: usize = 20;

/// Parses a `groups(uniqueName='…')` path segment (microsoft-graph-docs-contrib
/// `api-reference/v1.0/api/group-upsert.md`) into the unique name, quotes undoubled.
pub fn parse_unique_name_key(segment: &str) -> Option<String> {
    let inner = segment.strip_prefix("groups(")?.strip_suffix(')')?;
    let (key, value) = inner.split_once('=')?;
    if !key.trim().eq_ignore_ascii_case("uniqueName") {
        return None;
    }
    match tokenize(value).ok()?.as_slice() {
        [Token::Str(s)] => Some(s.clone()),
        _ => None,
    }
}

/// What `PATCH /groups(uniqueName='…')` did.
pub enum Upsert {
    /// 201 with the new group.
    Created(Value, Vec<Uuid>),
    /// 204: the group existed and was updated (members added).
    Updated(Vec<Uuid>),
}

/// How a group is addressed: by id, or by its `uniqueName` alternate key.
#[derive(Debug, Clone)]
pub enum GroupKey {
    /// `/groups/{id}`.
    Id(String),
    /// `/groups(uniqueName='…')`.
    UniqueName(String),
}

/// Validated writable properties of a group `PATCH`.
pub(super) struct GroupPatch {
    display_name: Option<String>,
    description: Option<String>,
    mail_nickname: Option<String>,
}

/// Parses `displayName eq 'O''Brien'` into `O'Brien` (OData doubles single quotes).
pub(super) fn parse_display_name_filter(filter: &str) -> Option<String> {
    let rest = filter.trim();
    let (prop, rest) = rest.split_once(char::is_whitespace)?;
    if !prop.eq_ignore_ascii_case("displayName") {
        return None;
    }
    let rest = rest.trim_start();
    let rest = rest.strip_prefix("eq")?.trim();
    odata_string(rest)
}

/// Parses `startswith(displayName,'O''B')` (any case of `startsWith` and `displayName`, spaces
/// around the arguments) into the prefix `O'B`.
pub(super) fn parse_display_name_prefix_filter(filter: &str) -> Option<String> {
    let rest = filter.trim();
    let (function, rest) = rest.split_at_checked("startswith".len())?;
    if !function.eq_ignore_ascii_case("startswith") {
        return None;
    }
    let args = rest.trim_start().strip_prefix('(')?.strip_suffix(')')?;
    let (prop, value) = args.split_once(',')?;
    if !prop.trim().eq_ignore_ascii_case("displayName") {
        return None;
    }
    odata_string(value.trim())
}

/// An OData string literal, `'…'` with every single quote inside doubled, unquoted.
fn odata_string(literal: &str) -> Option<String> {
    let inner = literal.strip_prefix('\'')?.strip_suffix('\'')?;
    // Any single quote left must be doubled.
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' && chars.next() != Some('\'') {
            return None;
        }
        out.push(c);
    }
    Some(out)
}

impl Directory {
    /// `POST /groups` (security groups only).
    pub fn create_group(&mut self, body: &Value) -> Result<Value, GraphError> {
        let display_name = body
            .get("displayName")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                GraphError::bad_request(
                    "Invalid value specified for property 'displayName' of resource 'Group'.",
                )
            })?;
        let mail_nickname = body
            .get("mailNickname")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                GraphError::bad_request(
                    "Invalid value specified for property 'mailNickname' of resource 'Group'.",
                )
            })?;
        let mail_enabled = body.get("mailEnabled").and_then(Value::as_bool);
        let security_enabled = body.get("securityEnabled").and_then(Value::as_bool);
        if mail_enabled != Some(false) || security_enabled != Some(true) {
            return Err(GraphError::bad_request(
                "The simulator only creates security groups (mailEnabled false, securityEnabled true).",
            ));
        }
        let group = Group {
            id: Uuid::new_v4(),
            display_name: display_name.to_owned(),
            mail_nickname: mail_nickname.to_owned(),
            unique_name: None,
            description: body
                .get("description")
                .and_then(Value::as_str)
                .map(str::to_owned),
            members: BTreeSet::new(),
            licences: Vec::new(),
        };
        let json = group.json();
        self.insert_group(group);
        Ok(json)
    }

    /// `GET /groups?$filter=displayName eq '…'` or `$filter=startswith(displayName,'…')`, both
    /// compared without regard to case: the group resource's displayName "Supports `$filter`
    /// (`eq`, `ne`, `NOT`, `ge`, `le`, `in`, `startsWith`, and `eq` on `null` values)", `eq` and
    /// `startsWith` without advanced query parameters (microsoft-graph-docs-contrib
    /// `api-reference/v1.0/resources/group.md`, `includes/filter-directory-objects.md`). Other
    /// filters are refused.
    pub fn find_groups(&self, filter: Option<&str>) -> Result<Value, GraphError> {
        let Some(filter) = filter else {
            let all: Vec<Value> = self
                .groups
                .keys()
                .filter_map(|id| self.visible_group(id))
                .map(Group::json)
                .collect();
            return Ok(json!({ "value": all }));
        };
        if let Some(prefix) = parse_display_name_prefix_filter(filter) {
            let prefix = prefix.to_lowercase();
            let value: Vec<Value> = self
                .group_names
                .range(prefix.clone()..)
                .take_while(|(name, _)| name.starts_with(&prefix))
                .flat_map(|(_, ids)| ids)
                .filter_map(|id| self.visible_group(id))
                .map(Group::json)
                .collect();
            return Ok(json!({ "value": value }));
        }
        let name = parse_display_name_filter(filter).ok_or_else(|| {
            GraphError::new(
                400,
                "BadRequest",
                format!("Invalid filter clause: {filter}"),
            )
        })?;
        let value: Vec<Value> = self
            .group_names
            .get(&name.to_lowercase())
            .map(|ids| {
                ids.iter()
                    .filter_map(|id| self.visible_group(id))
                    .map(Group::json)
                    .collect()
            })
            .unwrap_or_default();
        Ok(json!({ "value": value }))
    }

    pub(super) fn group(&self, key: &str) -> Result<&Group, GraphError> {
        Uuid::parse_str(key)
            .ok()
            .and_then(|id| self.visible_group(&id))
            .ok_or_else(|| GraphError::not_found(key))
    }

    /// One page of `GET /groups/{id}/members[/microsoft.graph.user]`, each member a user
    /// annotated with its `@odata.type` when `annotate` (a `directoryObject` collection; not
    /// with the OData cast, whose collection is of users); returns the page and the skip token
    /// of the next one.
    pub fn members_page(
        &self,
        group: &str,
        selection: Option<&str>,
        annotate: bool,
        after: Option<Uuid>,
        page_size: usize,
    ) -> Result<(Vec<Value>, Option<Uuid>), GraphError> {
        let group = self.group(group)?;
        let ids = membership_ids(
            Some(&group.members),
            self.replication.members.get(&group.id),
            after,
        )
        .filter_map(|id| self.visible_user(&id).map(|u| (id, u)));
        page_of(ids, page_size, |user| {
            let mut v = select(
                user.json(),
                selection,
                Some(USER_DEFAULT_PROPERTIES),
                "user",
            )?;
            if let (true, Value::Object(m)) = (annotate, &mut v) {
                m.insert("@odata.type".into(), json!("#microsoft.graph.user"));
            }
            Ok(v)
        })
    }

    /// `POST /groups/{id}/members/$ref`.
    pub fn add_member(&mut self, group: &str, body: &Value) -> Result<Uuid, GraphError> {
        let reference = body
            .get("@odata.id")
            .and_then(Value::as_str)
            .ok_or_else(|| GraphError::bad_request("Invalid request: '@odata.id' is missing."))?;
        let user_key = reference
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default();
        let gid = self.group(group)?.id;
        let uid = Uuid::parse_str(user_key)
            .ok()
            .filter(|id| self.visible_user(id).is_some())
            .ok_or_else(|| GraphError::not_found(user_key))?;
        if !self.insert_member(gid, uid) {
            return Err(GraphError::bad_request(
                "One or more added object references already exist for the following modified properties: 'members'.",
            ));
        }
        Ok(uid)
    }

    /// The membership-add primitive behind `add_member` and `members@odata.bind`: adds `uid`
    /// to `gid` (both checked by the caller) and records the change for the replicas. Returns
    /// false when the user already was a member.
    pub(super) fn insert_member(&mut self, gid: Uuid, uid: Uuid) -> bool {
        let Some(g) = self.groups.get_mut(&gid) else {
            return false;
        };
        if !g.members.insert(uid) {
            return false;
        }
        self.member_of.entry(uid).or_default().insert(gid);
        if let Some((now, lag)) = write_lag() {
            self.replication
                .membership_written(gid, uid, false, now, lag);
        }
        self.recompute_inherited(uid);
        true
    }

    /// `DELETE /groups/{id}/members/{user-id}/$ref`.
    pub fn remove_member(&mut self, group: &str, user: &str) -> Result<(), GraphError> {
        let gid = self.group(group)?.id;
        let g = self.groups.get_mut(&gid).expect("checked above");
        match Uuid::parse_str(user) {
            Ok(uid) if g.members.remove(&uid) => {
                if let Some(groups) = self.member_of.get_mut(&uid) {
                    groups.remove(&gid);
                }
                if let Some((now, lag)) = write_lag() {
                    self.replication
                        .membership_written(gid, uid, true, now, lag);
                }
                self.recompute_inherited(uid);
                Ok(())
            }
            _ => Err(GraphError::not_found(user)),
        }
    }

    /// The ids of the groups with this display name, sorted (inspection, primary state).
    pub fn group_ids_named(&self, display_name: &str) -> Vec<Uuid> {
        let mut ids = self
            .group_names
            .get(&display_name.to_lowercase())
            .cloned()
            .unwrap_or_default();
        ids.sort();
        ids
    }

    /// The display names of the groups a user is a direct member of, sorted (inspection).
    pub fn group_names_of(&self, user: &str) -> Option<Vec<String>> {
        let uid = self.resolve_user(user)?;
        let mut names: Vec<String> = self
            .member_of
            .get(&uid)
            .into_iter()
            .flatten()
            .map(|g| self.groups[g].display_name.clone())
            .collect();
        names.sort();
        Some(names)
    }

    /// One page of `GET /users/{id or upn}/memberOf[/microsoft.graph.group]`: the groups the
    /// user is a direct member of (Graph: "List a user's direct memberships",
    /// `user-list-memberof`; the simulator holds no directory roles or administrative units,
    /// so the OData cast to groups changes nothing but the `@odata.type` annotation). Paged as
    /// Graph pages directory objects ("Paging Microsoft Graph data", `paging.md`): at most
    /// `page_size` a page, the rest behind an opaque skip token. Returns the page and the skip
    /// token of the next one.
    pub fn member_of_page(
        &self,
        user: &str,
        selection: Option<&str>,
        annotate: bool,
        after: Option<Uuid>,
        page_size: usize,
    ) -> Result<(Vec<Value>, Option<Uuid>), GraphError> {
        let uid = self
            .resolve_user(user)
            .ok_or_else(|| GraphError::not_found(user))?;
        let ids = membership_ids(
            self.member_of.get(&uid),
            self.replication.member_of.get(&uid),
            after,
        )
        .filter_map(|id| self.visible_group(&id).map(|g| (id, g)));
        page_of(ids, page_size, |group| {
            let mut v = select(group.json(), selection, None, "group")?;
            if let (true, Value::Object(m)) = (annotate, &mut v) {
                m.insert("@odata.type".into(), json!("#microsoft.graph.group"));
            }
            Ok(v)
        })
    }
    pub(super) fn check_unique_name_free(&self, name: &str) -> Result<(), GraphError> {
        if self.unique_names.contains_key(&name.to_lowercase()) {
            return Err(GraphError::bad_request(
                "Another object with the same value for property uniqueName already exists.",
            ));
        }
        Ok(())
    }

    /// The id of the group with a `uniqueName` (case-insensitive), through the group lookup.
    pub(super) fn group_by_unique_name(&self, name: &str) -> Option<Uuid> {
        let id = self.unique_names.get(&name.to_lowercase())?;
        self.group(&id.to_string()).ok().map(|g| g.id)
    }

    /// `GET /groups/{id}` or `GET /groups(uniqueName='…')` with an optional `$select`
    /// (microsoft-graph-docs-contrib `api-reference/v1.0/api/group-get.md`).
    pub fn get_group(&self, key: &GroupKey, selection: Option<&str>) -> Result<Value, GraphError> {
        let id = self.group_key(key)?;
        select(
            self.group(&id.to_string())?.json(),
            selection,
            None,
            "group",
        )
    }

    pub(super) fn group_key(&self, key: &GroupKey) -> Result<Uuid, GraphError> {
        match key {
            GroupKey::Id(id) => self.group(id).map(|g| g.id),
            GroupKey::UniqueName(name) => self
                .group_by_unique_name(name)
                .ok_or_else(|| GraphError::not_found(name)),
        }
    }

    /// `GET /groups/{id}/members/$count`: the number of direct members the current view shows
    /// (a lagging replica counts the membership from before changes not yet replicated, and
    /// leaves out users it does not have yet, as `members_page` lists them).
    pub fn member_count(&self, group: &str) -> Result<usize, GraphError> {
        let group = self.group(group)?;
        if self.replication.is_empty() || !replica::current().is_some_and(View::hides_new) {
            return Ok(group.members.len());
        }
        Ok(membership_ids(
            Some(&group.members),
            self.replication.members.get(&group.id),
            None,
        )
        .filter(|id| self.visible_user(id).is_some())
        .count())
    }

    /// Validates a `members@odata.bind` list for group `gid` (absent: none): at most
    /// [`MAX_MEMBER_BINDS`], each a `…/directoryObjects/{id}` or `…/users/{id}` URL of an existing
    /// user that is not yet a member and not named twice. "If an error condition exists in the
    /// request body, no members are added" (`group-post-members.md`, example 2).
    pub(super) fn member_binds(
        &self,
        gid: Option<Uuid>,
        body: &Value,
    ) -> Result<Vec<Uuid>, GraphError> {
        let Some(list) = body.get("members@odata.bind") else {
            return Ok(Vec::new());
        };
        let list = list.as_array().ok_or_else(|| {
            GraphError::bad_request(
                "Invalid value for 'members@odata.bind': an array of URLs is expected.",
            )
        })?;
        if list.len() > MAX_MEMBER_BINDS {
            // The docs give the limit, not the wording.
            return Err(GraphError::bad_request(format!(
                "The request has {} references in 'members@odata.bind'; at most {MAX_MEMBER_BINDS} can be added in one request.",
                list.len()
            )));
        }
        let members = gid.map(|g| self.group(&g.to_string())).transpose()?;
        let mut out = Vec::with_capacity(list.len());
        for url in list {
            let url = url.as_str().unwrap_or_default();
            let mut parts = url.trim_end_matches('/').rsplit('/');
            let key = parts.next().unwrap_or_default();
            let kind = parts.next().unwrap_or_default();
            if !(kind.eq_ignore_ascii_case("directoryObjects")
                || kind.eq_ignore_ascii_case("users"))
            {
                return Err(GraphError::bad_request(format!(
                    "Invalid URL format specified in @odata.bind for members: '{url}'."
                )));
            }
            let uid = Uuid::parse_str(key)
                .ok()
                .and_then(|_| self.resolve_user(key))
                .ok_or_else(|| GraphError::not_found(key))?;
            if out.contains(&uid) || members.is_some_and(|g| g.members.contains(&uid)) {
                return Err(GraphError::bad_request(
                    "One or more added object references already exist for the following modified properties: 'members'.",
                ));
            }
            out.push(uid);
        }
        Ok(out)
    }

    /// Adds members validated by [`Self::member_binds`] through the membership-add primitive,
    /// in order; each add is recorded for the replicas like a `POST …/members/$ref`.
    pub(super) fn add_members(&mut self, gid: Uuid, members: &[Uuid]) {
        for uid in members {
            self.insert_member(gid, *uid);
        }
    }

    /// The writable properties of a security group in a `PATCH` body, validated; unknown ones
    /// are refused rather than silently ignored.
    pub(super) fn group_patch(body: &Value) -> Result<GroupPatch, GraphError> {
        let obj = body.as_object().ok_or_else(|| {
            GraphError::new(400, "BadRequest", "Empty Payload. JSON content expected.")
        })?;
        let text = |k: &str| -> Result<Option<String>, GraphError> {
            match obj.get(k) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(GraphError::bad_request(format!(
                    "Invalid value specified for property '{k}' of resource 'Group'."
                ))),
            }
        };
        for (k, v) in obj {
            let ok = match k.as_str() {
                "displayName" | "description" | "mailNickname" | "members@odata.bind" => true,
                "mailEnabled" => v == &json!(false),
                "securityEnabled" => v == &json!(true),
                "groupTypes" => v == &json!([]),
                _ => false,
            };
            if !ok {
                return Err(GraphError::bad_request(format!(
                    "The simulator does not support '{k}' with this value on a group (security groups only)."
                )));
            }
        }
        Ok(GroupPatch {
            display_name: text("displayName")?,
            description: text("description")?,
            mail_nickname: text("mailNickname")?,
        })
    }

    /// Applies changed properties to a group (the mutation primitive of updates), keeping the
    /// display-name index right.
    pub(super) fn set_group_properties(&mut self, gid: Uuid, patch: GroupPatch) {
        let Some(g) = self.groups.get_mut(&gid) else {
            return;
        };
        if let Some(name) = patch.display_name {
            let old = std::mem::replace(&mut g.display_name, name.clone());
            if let Some(ids) = self.group_names.get_mut(&old.to_lowercase()) {
                ids.retain(|id| *id != gid);
            }
            self.group_names
                .entry(name.to_lowercase())
                .or_default()
                .push(gid);
        }
        let Some(g) = self.groups.get_mut(&gid) else {
            return;
        };
        if let Some(d) = patch.description {
            g.description = Some(d);
        }
        if let Some(n) = patch.mail_nickname {
            g.mail_nickname = n;
        }
    }

    /// `PATCH /groups/{id}`: group properties and `members@odata.bind` (up to 20, all or none;
    /// microsoft-graph-docs-contrib `api-reference/v1.0/api/group-post-members.md`, example 2, and
    /// `group-update.md`). Returns the members added.
    pub fn update_group(&mut self, group: &str, body: &Value) -> Result<Vec<Uuid>, GraphError> {
        let gid = self.group(group)?.id;
        let patch = Self::group_patch(body)?;
        let members = self.member_binds(Some(gid), body)?;
        self.set_group_properties(gid, patch);
        self.add_members(gid, &members);
        Ok(members)
    }

    /// `PATCH /groups(uniqueName='…')` (microsoft-graph-docs-contrib
    /// `api-reference/v1.0/api/group-upsert.md`): with `Prefer: create-if-missing` a missing group
    /// is created (201 with the group, `uniqueName` set; `displayName`, `mailEnabled`,
    /// `mailNickname` and `securityEnabled` required), an existing one updated (204); without it
    /// the request "is treated as an update operation", so a missing group is 404. `uniqueName` is
    /// unique (compared case-insensitively by the simulator); `displayName` is not.
    pub fn upsert_group(
        &mut self,
        unique_name: &str,
        body: &Value,
        create_if_missing: bool,
    ) -> Result<Upsert, GraphError> {
        let patch = Self::group_patch(body)?;
        if let Some(gid) = self.group_by_unique_name(unique_name) {
            let members = self.member_binds(Some(gid), body)?;
            self.set_group_properties(gid, patch);
            self.add_members(gid, &members);
            return Ok(Upsert::Updated(members));
        }
        // A group that exists but whose creation this write's replica has not seen: the write
        // names an object not yet replicated and answers 404 ([`super::replica`]), rather than
        // creating a second group or refusing the name as taken.
        if !create_if_missing || self.unique_names.contains_key(&unique_name.to_lowercase()) {
            return Err(GraphError::not_found(unique_name));
        }
        self.check_unique_name_free(unique_name)?;
        let members = self.member_binds(None, body)?;
        let required = |k: &str| {
            GraphError::bad_request(format!(
                "Invalid value specified for property '{k}' of resource 'Group'."
            ))
        };
        for k in ["mailEnabled", "securityEnabled"] {
            if body.get(k).is_none() {
                return Err(required(k));
            }
        }
        let group = Group {
            id: Uuid::new_v4(),
            display_name: patch.display_name.ok_or_else(|| required("displayName"))?,
            mail_nickname: patch
                .mail_nickname
                .ok_or_else(|| required("mailNickname"))?,
            unique_name: Some(unique_name.to_owned()),
            description: patch.description,
            members: BTreeSet::new(),
            licences: Vec::new(),
        };
        let gid = group.id;
        self.insert_group(group);
        // The group was just created by this very write: its members are added to it whatever
        // the write's replica shows of new objects.
        self.add_members(gid, &members);
        let json = self
            .groups
            .get(&gid)
            .map(Group::json)
            .ok_or_else(|| GraphError::not_found(unique_name))?;
        Ok(Upsert::Created(json, members))
    }
}
