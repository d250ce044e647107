//! What each Phone System admin role may do: the permissions table of the Phone System
//! Administrator Roles document, encoded once as data.
//!
//! Every row is an action in an area, for a scope (the admin's own organisation, or another
//! organisation within their ODS mapping), with whether a Primary and a Local admin may do it.
//! `policy-reconciler permissions` prints it ([`render_table`]).

use super::AdminRole;

/// What the action is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Area {
    /// Calling policies, caller ID policies, auto attendants, resource accounts, call queues,
    /// dial plans and voice routing policies.
    PhoneSystemPolicies,
    Sbcs,
    Numbers,
    Users,
    Reporting,
    /// Offboarding an organisation and porting out its numbers.
    OffboardingAndPortOut,
}

impl Area {
    pub const ALL: &'static [Area] = &[
        Self::PhoneSystemPolicies,
        Self::Sbcs,
        Self::Numbers,
        Self::Users,
        Self::Reporting,
        Self::OffboardingAndPortOut,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PhoneSystemPolicies => "phone system policies",
            Self::Sbcs => "SBCs",
            Self::Numbers => "numbers",
            Self::Users => "users",
            Self::Reporting => "reporting",
            Self::OffboardingAndPortOut => "offboarding and port-out",
        }
    }
}

/// Whose data the action touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The admin's own organisation.
    Own,
    /// Another organisation within the admin's ODS mapping.
    OtherInMapping,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Own => "own organisation",
            Self::OtherInMapping => "other organisations in the mapping",
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permission {
    pub area: Area,
    /// The action, e.g. `view`, `request number type change`.
    pub action: &'static str,
    pub scope: Scope,
    pub primary: bool,
    pub local: bool,
}

impl Permission {
    /// Whether `role` may do this.
    pub fn allows(&self, role: AdminRole) -> bool {
        match role {
            AdminRole::PhoneSystemPrimaryAdmin => self.primary,
            AdminRole::PhoneSystemLocalAdmin => self.local,
        }
    }
}

const fn row(
    area: Area,
    action: &'static str,
    scope: Scope,
    primary: bool,
    local: bool,
) -> Permission {
    Permission {
        area,
        action,
        scope,
        primary,
        local,
    }
}

use Area::*;
use Scope::*;

/// The permissions table, in the document's order.
pub const PERMISSIONS: &[Permission] = &[
    // Configuring Phone System policies.
    row(PhoneSystemPolicies, "view", Own, true, true),
    row(PhoneSystemPolicies, "view", OtherInMapping, true, false),
    row(PhoneSystemPolicies, "create", Own, true, true),
    row(PhoneSystemPolicies, "create", OtherInMapping, false, false),
    row(PhoneSystemPolicies, "assign", Own, true, true),
    row(PhoneSystemPolicies, "assign", OtherInMapping, true, false),
    row(PhoneSystemPolicies, "edit", Own, true, true),
    row(PhoneSystemPolicies, "edit", OtherInMapping, true, false),
    row(PhoneSystemPolicies, "delete", Own, true, true),
    row(PhoneSystemPolicies, "delete", OtherInMapping, true, false),
    // Configuring SBCs.
    row(Sbcs, "view", Own, true, true),
    row(Sbcs, "view", OtherInMapping, true, false),
    row(Sbcs, "create", Own, true, true),
    row(Sbcs, "create", OtherInMapping, false, false),
    row(Sbcs, "assign", Own, true, true),
    row(Sbcs, "assign", OtherInMapping, true, false),
    row(Sbcs, "edit", Own, true, true),
    row(Sbcs, "edit", OtherInMapping, true, false),
    row(Sbcs, "delete", Own, true, true),
    row(Sbcs, "delete", OtherInMapping, true, false),
    // Managing numbers.
    row(Numbers, "view", Own, true, true),
    row(Numbers, "view", OtherInMapping, true, false),
    row(Numbers, "assign", Own, true, true),
    row(Numbers, "assign", OtherInMapping, true, false),
    row(Numbers, "unassign", Own, true, true),
    row(Numbers, "unassign", OtherInMapping, true, false),
    row(Numbers, "request number type change", Own, true, true),
    row(
        Numbers,
        "request number type change",
        OtherInMapping,
        true,
        false,
    ),
    // Managing users.
    row(Users, "view", Own, true, true),
    row(Users, "view", OtherInMapping, true, false),
    row(Users, "assign policies", Own, true, true),
    row(Users, "assign policies", OtherInMapping, true, false),
    // Reporting.
    row(Reporting, "view", Own, true, true),
    row(Reporting, "view", OtherInMapping, true, false),
    row(Reporting, "request email report", Own, true, true),
    row(
        Reporting,
        "request email report",
        OtherInMapping,
        true,
        false,
    ),
    row(Reporting, "export", Own, true, true),
    row(Reporting, "export", OtherInMapping, true, false),
    // Offboarding and port-out.
    row(OffboardingAndPortOut, "offboard", Own, true, true),
    row(
        OffboardingAndPortOut,
        "offboard",
        OtherInMapping,
        true,
        false,
    ),
    row(OffboardingAndPortOut, "request port-out", Own, true, true),
    row(
        OffboardingAndPortOut,
        "request port-out",
        OtherInMapping,
        true,
        false,
    ),
];

/// Whether `role` may do `action` in `area` for `scope`; false for an action the table lacks.
pub fn allowed(role: AdminRole, area: Area, action: &str, scope: Scope) -> bool {
    PERMISSIONS
        .iter()
        .find(|p| p.area == area && p.action == action && p.scope == scope)
        .is_some_and(|p| p.allows(role))
}

/// The table as aligned plain text: area, action, scope, Primary, Local.
pub fn render_table() -> String {
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let header = ["area", "action", "scope", "primary admin", "local admin"];
    let rows: Vec<[&str; 5]> = PERMISSIONS
        .iter()
        .map(|p| {
            [
                p.area.as_str(),
                p.action,
                p.scope.as_str(),
                yes_no(p.primary),
                yes_no(p.local),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: &[&str; 5]| {
        let text: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        format!("{}\n", text.join("  ").trim_end())
    };
    let mut out = line(&header);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&format!("{}\n", rule.join("  ")));
    for row in &rows {
        out.push_str(&line(row));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row of the document's table, transcribed: (area, action, scope, primary, local).
    /// `O` = their own organisation, `M` = other organisations within their ODS mapping.
    #[test]
    fn every_row_and_column_matches_the_document() {
        use AdminRole::{PhoneSystemLocalAdmin as L, PhoneSystemPrimaryAdmin as P};
        const O: Scope = Own;
        const M: Scope = OtherInMapping;
        let expected: &[(Area, &str, Scope, bool, bool)] = &[
            (PhoneSystemPolicies, "view", O, true, true),
            (PhoneSystemPolicies, "view", M, true, false),
            (PhoneSystemPolicies, "create", O, true, true),
            (PhoneSystemPolicies, "create", M, false, false),
            (PhoneSystemPolicies, "assign", O, true, true),
            (PhoneSystemPolicies, "assign", M, true, false),
            (PhoneSystemPolicies, "edit", O, true, true),
            (PhoneSystemPolicies, "edit", M, true, false),
            (PhoneSystemPolicies, "delete", O, true, true),
            (PhoneSystemPolicies, "delete", M, true, false),
            (Sbcs, "view", O, true, true),
            (Sbcs, "view", M, true, false),
            (Sbcs, "create", O, true, true),
            (Sbcs, "create", M, false, false),
            (Sbcs, "assign", O, true, true),
            (Sbcs, "assign", M, true, false),
            (Sbcs, "edit", O, true, true),
            (Sbcs, "edit", M, true, false),
            (Sbcs, "delete", O, true, true),
            (Sbcs, "delete", M, true, false),
            (Numbers, "view", O, true, true),
            (Numbers, "view", M, true, false),
            (Numbers, "assign", O, true, true),
            (Numbers, "assign", M, true, false),
            (Numbers, "unassign", O, true, true),
            (Numbers, "unassign", M, true, false),
            (Numbers, "request number type change", O, true, true),
            (Numbers, "request number type change", M, true, false),
            (Users, "view", O, true, true),
            (Users, "view", M, true, false),
            (Users, "assign policies", O, true, true),
            (Users, "assign policies", M, true, false),
            (Reporting, "view", O, true, true),
            (Reporting, "view", M, true, false),
            (Reporting, "request email report", O, true, true),
            (Reporting, "request email report", M, true, false),
            (Reporting, "export", O, true, true),
            (Reporting, "export", M, true, false),
            (OffboardingAndPortOut, "offboard", O, true, true),
            (OffboardingAndPortOut, "offboard", M, true, false),
            (OffboardingAndPortOut, "request port-out", O, true, true),
            (OffboardingAndPortOut, "request port-out", M, true, false),
        ];
        // The document has 42 rows; the data has exactly these, in this order.
        assert_eq!(expected.len(), 42);
        assert_eq!(PERMISSIONS.len(), expected.len());
        for (p, &(area, action, scope, primary, local)) in PERMISSIONS.iter().zip(expected) {
            let what = format!("{} / {action} / {}", area.as_str(), scope.as_str());
            assert_eq!((p.area, p.action, p.scope), (area, action, scope), "{what}");
            // Both columns, through the lookup the rest of the crate uses.
            assert_eq!(allowed(P, area, action, scope), primary, "primary: {what}");
            assert_eq!(allowed(L, area, action, scope), local, "local: {what}");
        }
        // Every area appears, and every action of an area for both scopes.
        for area in Area::ALL {
            let own = PERMISSIONS
                .iter()
                .filter(|p| p.area == *area && p.scope == Own)
                .count();
            let other = PERMISSIONS
                .iter()
                .filter(|p| p.area == *area && p.scope == OtherInMapping)
                .count();
            assert!(own > 0 && own == other, "{}", area.as_str());
        }
        assert!(
            !allowed(P, Numbers, "fly", Own),
            "unknown actions are refused"
        );
    }

    #[test]
    fn the_rendered_table_has_a_line_per_row() {
        let table = render_table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2 + PERMISSIONS.len());
        assert!(lines[0].starts_with("area"), "{}", lines[0]);
        assert!(lines[0].contains("primary admin") && lines[0].contains("local admin"));
        let create_other = lines
            .iter()
            .find(|l| l.starts_with("SBCs") && l.contains("create") && l.contains("other"))
            .unwrap();
        let last_two = |line: &str| -> Vec<String> {
            let words: Vec<&str> = line.split_whitespace().collect();
            words[words.len() - 2..]
                .iter()
                .map(|w| w.to_string())
                .collect()
        };
        assert_eq!(last_two(create_other), ["no", "no"], "{create_other}");
        let view_other = lines
            .iter()
            .find(|l| l.starts_with("reporting") && l.contains("view") && l.contains("other"))
            .unwrap();
        assert_eq!(last_two(view_other), ["yes", "no"], "{view_other}");
    }
}
