//! Users: `GET`, `POST` and `PATCH /users`, `$filter`ed lists from the indexes, and Entra ID's
//! rules on user principal names, usage locations and addresses.
use super::*;

/// Checks a user principal name against Entra ID's rules (MicrosoftDocs/entra-docs
/// `docs/identity/authentication/concept-sspr-policy.md`, "UserPrincipalName policies that apply
/// to all user accounts"; also microsoft-graph-docs-contrib `api-reference/v1.0/api/user-post-users.md`):
/// one `@`; the local part only `A-Z a-z 0-9 ' . - _ ! # ^ ~`, at most 64 characters and not
/// ending with `.`; at most 48 characters after the `@`; at most 113 in all. The message is
/// the one Graph is seen to answer (the docs give none).
pub fn validate_upn(upn: &str) -> Result<(), GraphError> {
    let invalid = || {
        GraphError::new(
            400,
            "Request_BadRequest",
            "Property userPrincipalName is invalid.",
        )
    };
    let (local, domain) = upn.split_once('@').ok_or_else(invalid)?;
    let local_ok = |c: char| c.is_ascii_alphanumeric() || "'.-_!#^~".contains(c);
    let domain_ok = |c: char| c.is_ascii_alphanumeric() || ".-".contains(c);
    if local.is_empty()
        || domain.is_empty()
        || upn.chars().count() > 113
        || local.chars().count() > 64
        || domain.chars().count() > 48
        || local.ends_with('.')
        || !local.chars().all(local_ok)
        || !domain.chars().all(domain_ok)
    {
        return Err(invalid());
    }
    Ok(())
}

/// The 249 codes ISO 3166-1 assigns (alpha-2), sorted: the countries and territories a
/// `usageLocation` can name. Left out are the codes ISO 3166-1 leaves to users and never assigns
/// to a country (`AA`, `QM`–`QZ`, `XA`–`XZ`, `ZZ`), the exceptionally and transitionally
/// reserved ones (`UK`, `EU`, `AN`, …) and unassigned pairs. Checked against the tz database's
/// `iso3166.tab` and Debian's iso-codes `iso_3166-1.json`.
pub const ISO_3166_ALPHA2: [&str; 249] = [
    "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ",
    "BA", "BB", "BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS",
    "BT", "BV", "BW", "BY", "BZ", "CA", "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN",
    "CO", "CR", "CU", "CV", "CW", "CX", "CY", "CZ", "DE", "DJ", "DK", "DM", "DO", "DZ", "EC", "EE",
    "EG", "EH", "ER", "ES", "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA", "GB", "GD", "GE", "GF",
    "GG", "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY", "HK", "HM",
    "HN", "HR", "HT", "HU", "ID", "IE", "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM",
    "JO", "JP", "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC",
    "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY", "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK",
    "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT", "MU", "MV", "MW", "MX", "MY", "MZ", "NA",
    "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU", "NZ", "OM", "PA", "PE", "PF", "PG",
    "PH", "PK", "PL", "PM", "PN", "PR", "PS", "PT", "PW", "PY", "QA", "RE", "RO", "RS", "RU", "RW",
    "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "SS",
    "ST", "SV", "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL", "TM", "TN", "TO",
    "TR", "TT", "TV", "TW", "TZ", "UA", "UG", "UM", "US", "UY", "UZ", "VA", "VC", "VE", "VG", "VI",
    "VN", "VU", "WF", "WS", "YE", "YT", "ZA", "ZM", "ZW",
];

/// Checks a `usageLocation`: "A two-letter country code (ISO standard 3166)"
/// (microsoft-graph-docs-contrib `api-reference/v1.0/resources/user.md`, usageLocation), and the
/// tenant contract: "`usageLocation` is an ISO 3166 two-letter code. The simulator refuses others
/// as Graph does." A code counts only when ISO 3166-1 assigns it (`ISO_3166_ALPHA2`): two
/// letters that name no country (`ZZ`, `AA`, `UK`) are refused like `GBR`, with the same 400
/// (the docs give no wording for the refusal). `null` clears it; the code is stored in upper
/// case.
pub fn validate_usage_location(value: &Value) -> Result<Option<String>, GraphError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s)
            if s.len() == 2
                && ISO_3166_ALPHA2
                    .binary_search(&s.to_ascii_uppercase().as_str())
                    .is_ok() =>
        {
            Ok(Some(s.to_ascii_uppercase()))
        }
        _ => Err(GraphError::new(
            400,
            "Request_BadRequest",
            "Invalid value specified for property 'usageLocation' of resource 'User'.",
        )),
    }
}

/// `mail`, `proxyAddresses` and `otherMails` of a `POST /users` body. `mail` is writable and
/// becomes the primary proxy address; `proxyAddresses` "can't be updated through Microsoft
/// Graph" (microsoft-graph-docs-contrib `api-reference/v1.0/resources/user.md`, "mail and
/// proxyAddresses properties").
pub(super) type Addresses = (Option<String>, Vec<String>, Vec<String>);

pub(super) fn create_addresses(body: &Value) -> Result<Addresses, GraphError> {
    if body.get("proxyAddresses").is_some() {
        return Err(GraphError::new(
            400,
            "Request_BadRequest",
            "Property 'proxyAddresses' is read-only and cannot be set.",
        ));
    }
    let invalid = |p: &str| {
        GraphError::new(
            400,
            "Request_BadRequest",
            format!("Invalid value specified for property '{p}' of resource 'User'."),
        )
    };
    let mail = match body.get("mail") {
        None | Some(Value::Null) => None,
        Some(Value::String(m)) if m.contains('@') => Some(m.clone()),
        Some(_) => return Err(invalid("mail")),
    };
    let other_mails = match body.get("otherMails") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| invalid("otherMails"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(invalid("otherMails")),
    };
    let proxies = mail.iter().map(|m| format!("SMTP:{m}")).collect();
    Ok((mail, proxies, other_mails))
}

/// One page of `GET /users`.
pub struct UsersPage {
    /// The users of the page, `$select`ed.
    pub value: Vec<Value>,
    /// The skip token of the next page.
    pub next: Option<Uuid>,
    /// How many users match in all (for `@odata.count`).
    pub count: usize,
}

impl Directory {
    /// `GET /users/{id or upn}` with an optional `$select`.
    pub fn get_user(&self, key: &str, selection: Option<&str>) -> Result<Value, GraphError> {
        let user = self
            .resolve_user(key)
            .and_then(|id| self.visible_user(&id))
            .ok_or_else(|| GraphError::not_found(key))?;
        select(
            user.json(),
            selection,
            Some(USER_DEFAULT_PROPERTIES),
            "user",
        )
    }

    /// The full JSON of a user (simulator inspection).
    pub fn user_json(&self, key: &str) -> Option<Value> {
        self.resolve_user(key).map(|id| self.users[&id].json())
    }

    /// `POST /users`.
    pub fn create_user(&mut self, body: &Value) -> Result<Value, GraphError> {
        let s = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_owned);
        let missing = |k: &str| {
            GraphError::bad_request(format!(
                "Invalid value specified for property '{k}' of resource 'User'."
            ))
        };
        let upn = s("userPrincipalName").ok_or_else(|| missing("userPrincipalName"))?;
        let display_name = s("displayName").ok_or_else(|| missing("displayName"))?;
        let mail_nickname = s("mailNickname").ok_or_else(|| missing("mailNickname"))?;
        let account_enabled = body
            .get("accountEnabled")
            .and_then(Value::as_bool)
            .ok_or_else(|| missing("accountEnabled"))?;
        if body.get("passwordProfile").is_none_or(|p| !p.is_object()) {
            return Err(missing("passwordProfile"));
        }
        if !upn.contains('@') {
            return Err(missing("userPrincipalName"));
        }
        validate_upn(&upn)?;
        let usage_location = body
            .get("usageLocation")
            .map(validate_usage_location)
            .transpose()?
            .flatten();
        let (mail, proxy_addresses, other_mails) = create_addresses(body)?;
        let user = User {
            id: Uuid::new_v4(),
            upn,
            display_name,
            mail_nickname,
            account_enabled,
            usage_location,
            licences: Vec::new(),
            mail,
            proxy_addresses,
            other_mails,
            inherited: Vec::new(),
        };
        let json = user.json();
        self.insert_user(user)?;
        Ok(json)
    }

    /// Whether a user id resolves (so that any rule the lookup applies also applies to filters).
    pub(super) fn visible(&self, id: Uuid) -> bool {
        self.resolve_user(&id.to_string()) == Some(id)
    }

    /// Refuses a user whose proxy addresses belong to another object, or whose `mail` is another
    /// object's proxy address: "proxyAddresses are unique across directory objects" and "If a
    /// user's mail property conflicts with one of the proxyAddresses of another object, an attempt
    /// to update the mail fails" (microsoft-graph-docs-contrib `api-reference/v1.0/resources/user.md`).
    pub(super) fn check_addresses_free(&self, user: &User) -> Result<(), GraphError> {
        let taken = |key: String| self.proxy_index.get(&key).is_some_and(|id| *id != user.id);
        let mail_taken = user
            .mail
            .as_deref()
            .is_some_and(|m| taken(format!("smtp:{}", m.to_lowercase())));
        if mail_taken || user.proxy_addresses.iter().any(|p| taken(p.to_lowercase())) {
            return Err(GraphError::bad_request(
                "Another object with the same value for property proxyAddresses already exists.",
            ));
        }
        Ok(())
    }

    pub(super) fn index_addresses(&mut self, user: &User) {
        if let Some(m) = &user.mail {
            self.mail_index
                .entry(m.to_lowercase())
                .or_default()
                .push(user.id);
        }
        for p in &user.proxy_addresses {
            self.proxy_index.insert(p.to_lowercase(), user.id);
        }
        for m in &user.other_mails {
            self.other_mail_index
                .entry(m.to_lowercase())
                .or_default()
                .push(user.id);
        }
    }

    /// The users a filter matches, from the indexes only (no filter scans all users). Values are
    /// compared case-insensitively, so `smtp:` matches both `SMTP:` and `smtp:` entries.
    pub(super) fn matching_users(&self, f: &UserFilter) -> BTreeSet<Uuid> {
        let many = |index: &HashMap<String, Vec<Uuid>>, v: &str| -> BTreeSet<Uuid> {
            index
                .get(&v.to_lowercase())
                .into_iter()
                .flatten()
                .copied()
                .collect()
        };
        let ids: BTreeSet<Uuid> = match f {
            UserFilter::Or(a, b) => {
                return &self.matching_users(a) | &self.matching_users(b);
            }
            UserFilter::And(a, b) => {
                return &self.matching_users(a) & &self.matching_users(b);
            }
            UserFilter::Upn(v) => self
                .upn_index
                .get(&v.to_lowercase())
                .copied()
                .into_iter()
                .collect(),
            UserFilter::Mail(v) => many(&self.mail_index, v),
            UserFilter::ProxyAddress(v) => self
                .proxy_index
                .get(&v.to_lowercase())
                .copied()
                .into_iter()
                .collect(),
            UserFilter::OtherMail(v) => many(&self.other_mail_index, v),
        };
        ids.into_iter().filter(|id| self.visible(*id)).collect()
    }

    /// `GET /users[?$filter=…]`: one page of the users a filter matches (all users without one),
    /// ordered by id, at most `page_size`, after the skip token `after`
    /// (microsoft-graph-docs-contrib `api-reference/v1.0/api/user-list.md`, `concepts/paging.md`).
    pub fn list_users(
        &self,
        filter: Option<&str>,
        selection: Option<&str>,
        after: Option<Uuid>,
        page_size: usize,
    ) -> Result<UsersPage, GraphError> {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        // Through the view: a lagging replica shows a user as before its last writes.
        let render = |id: &Uuid| {
            let user = self
                .visible_user(id)
                .ok_or_else(|| GraphError::not_found(&id.to_string()))?;
            select(
                user.json(),
                selection,
                Some(USER_DEFAULT_PROPERTIES),
                "user",
            )
        };
        let (ids, count): (Vec<Uuid>, usize) = match filter {
            Some(f) => {
                let matched = self.matching_users(&parse_user_filter(f)?);
                let page = matched
                    .range((start, Bound::Unbounded))
                    .take(page_size.max(1) + 1)
                    .copied()
                    .collect();
                (page, matched.len())
            }
            None => (
                self.user_order
                    .range((start, Bound::Unbounded))
                    .filter(|id| self.visible(**id))
                    .take(page_size.max(1) + 1)
                    .copied()
                    .collect(),
                self.visible_user_count(),
            ),
        };
        let (value, next) = page_of(ids.into_iter().map(|id| (id, id)), page_size, |id| {
            render(&id)
        })?;
        Ok(UsersPage { value, next, count })
    }

    /// `PATCH /users/{id or upn}`: the simulator updates `usageLocation` (validated as an ISO 3166
    /// two-letter code) and refuses other properties (microsoft-graph-docs-contrib
    /// `api-reference/v1.0/api/user-update.md`; 204 on success). Returns the user's id.
    pub fn update_user(&mut self, key: &str, body: &Value) -> Result<Uuid, GraphError> {
        let id = self
            .resolve_user(key)
            .ok_or_else(|| GraphError::not_found(key))?;
        let obj = body.as_object().ok_or_else(|| {
            GraphError::new(400, "BadRequest", "Empty Payload. JSON content expected.")
        })?;
        if let Some(other) = obj.keys().find(|k| *k != "usageLocation") {
            return Err(GraphError::bad_request(format!(
                "The simulator updates only 'usageLocation' of a user, not '{other}'."
            )));
        }
        if let Some(v) = obj.get("usageLocation") {
            let location = validate_usage_location(v)?;
            self.set_usage_location(id, location);
        }
        Ok(id)
    }

    /// Sets a user's usage location (the mutation primitive of `update_user`), recording the
    /// user's previous version for the replicas the write has not reached yet.
    pub(super) fn set_usage_location(&mut self, id: Uuid, location: Option<String>) {
        let lag = write_lag();
        if let Some(u) = self.users.get_mut(&id) {
            if let Some((now, lag)) = lag {
                self.replication.user_written(id, Some(u.clone()), now, lag);
            }
            u.usage_location = location;
        }
    }

    /// The number of users the current view shows: all of them, less those whose creation is
    /// not yet replicated when the view hides new objects (from the pending writes only, so
    /// that no user is scanned).
    pub(super) fn visible_user_count(&self) -> usize {
        let hides_new = replica::current().is_some_and(View::hides_new);
        if !hides_new || self.replication.is_empty() {
            return self.users.len();
        }
        let now = Instant::now();
        let hidden = self
            .replication
            .users
            .values()
            .filter(|p| p.before.is_none() && p.active(now))
            .count();
        self.users.len().saturating_sub(hidden)
    }
}
