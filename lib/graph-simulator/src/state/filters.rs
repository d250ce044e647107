//! The `$filter` subset the simulator serves on users, and Graph's refusals of the rest.
use super::*;

/// The error Graph answers for a `$filter` clause it does not support on a property
/// (microsoft-graph-docs-contrib `concepts/aad-advanced-queries.md`, "Error handling").
pub(super) fn unsupported_filter(property: &str, resource: &str) -> GraphError {
    GraphError::new(
        400,
        "Request_UnsupportedQuery",
        format!(
            "Unsupported or invalid query filter clause specified for property '{property}' of resource '{resource}'."
        ),
    )
}

pub(super) fn invalid_filter(filter: &str) -> GraphError {
    GraphError::new(
        400,
        "BadRequest",
        format!("Invalid filter clause: {filter}"),
    )
}

/// A parsed user `$filter`: the subset of Graph's default (non-advanced) filters the simulator
/// serves from its indexes (microsoft-graph-docs-contrib `includes/filter-directory-objects.md`:
/// `eq` on `userPrincipalName` and `mail`, `any(… eq …)` on `proxyAddresses` and `otherMails`, all
/// "Default", i.e. without `ConsistencyLevel: eventual`).
#[derive(Debug, PartialEq)]
pub(super) enum UserFilter {
    Or(Box<UserFilter>, Box<UserFilter>),
    And(Box<UserFilter>, Box<UserFilter>),
    Upn(String),
    Mail(String),
    ProxyAddress(String),
    OtherMail(String),
}

#[derive(Debug, PartialEq)]
pub(super) enum Token {
    Open,
    Close,
    Colon,
    Slash,
    Str(String),
    Word(String),
}

pub(super) fn tokenize(filter: &str) -> Result<Vec<Token>, GraphError> {
    let mut out = Vec::new();
    let mut chars = filter.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' | ')' | ':' | '/' => {
                chars.next();
                out.push(match c {
                    '(' => Token::Open,
                    ')' => Token::Close,
                    ':' => Token::Colon,
                    _ => Token::Slash,
                });
            }
            '\'' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => return Err(invalid_filter(filter)),
                        // OData doubles a quote inside a string literal.
                        Some('\'') if chars.peek() == Some(&'\'') => {
                            chars.next();
                            s.push('\'');
                        }
                        Some('\'') => break,
                        Some(c) => s.push(c),
                    }
                }
                out.push(Token::Str(s));
            }
            _ => {
                let mut w = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || "():/'".contains(c) {
                        break;
                    }
                    w.push(c);
                    chars.next();
                }
                out.push(Token::Word(w));
            }
        }
    }
    Ok(out)
}

pub(super) struct FilterParser<'a> {
    filter: &'a str,
    tokens: Vec<Token>,
    at: usize,
}

impl FilterParser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<&Token> {
        self.at += 1;
        self.tokens.get(self.at - 1)
    }

    fn keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token::Word(w)) if w.eq_ignore_ascii_case(word))
    }

    fn expect(&mut self, t: &Token) -> Result<(), GraphError> {
        match self.next() {
            Some(x) if x == t => Ok(()),
            _ => Err(invalid_filter(self.filter)),
        }
    }

    fn word(&mut self) -> Result<String, GraphError> {
        match self.next() {
            Some(Token::Word(w)) => Ok(w.clone()),
            _ => Err(invalid_filter(self.filter)),
        }
    }

    fn string(&mut self, property: &str) -> Result<String, GraphError> {
        match self.next() {
            Some(Token::Str(s)) => Ok(s.clone()),
            // `null`, numbers, …: not supported by default on these properties.
            Some(Token::Word(_)) => Err(unsupported_filter(property, "User")),
            _ => Err(invalid_filter(self.filter)),
        }
    }

    fn or(&mut self) -> Result<UserFilter, GraphError> {
        let mut left = self.and()?;
        while self.keyword("or") {
            self.at += 1;
            left = UserFilter::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<UserFilter, GraphError> {
        let mut left = self.primary()?;
        while self.keyword("and") {
            self.at += 1;
            left = UserFilter::And(Box::new(left), Box::new(self.primary()?));
        }
        Ok(left)
    }

    fn primary(&mut self) -> Result<UserFilter, GraphError> {
        if self.peek() == Some(&Token::Open) {
            self.at += 1;
            let inner = self.or()?;
            self.expect(&Token::Close)?;
            return Ok(inner);
        }
        let property = self.word()?;
        if self.peek() == Some(&Token::Slash) {
            // `proxyAddresses/any(p:p eq '…')`
            self.at += 1;
            let lambda = self.word()?;
            if !lambda.eq_ignore_ascii_case("any") {
                return Err(unsupported_filter(&property, "User"));
            }
            self.expect(&Token::Open)?;
            let var = self.word()?;
            self.expect(&Token::Colon)?;
            let var2 = self.word()?;
            let op = self.word()?;
            if var != var2 || !op.eq_ignore_ascii_case("eq") {
                return Err(unsupported_filter(&property, "User"));
            }
            let value = self.string(&property)?;
            self.expect(&Token::Close)?;
            return if property.eq_ignore_ascii_case("proxyAddresses") {
                Ok(UserFilter::ProxyAddress(value))
            } else if property.eq_ignore_ascii_case("otherMails") {
                Ok(UserFilter::OtherMail(value))
            } else {
                Err(unsupported_filter(&property, "User"))
            };
        }
        if self.peek() == Some(&Token::Open) {
            // A function such as `startsWith(…)` or `endsWith(…)`.
            return Err(unsupported_filter(&property, "User"));
        }
        let op = self.word()?;
        if !op.eq_ignore_ascii_case("eq") {
            return Err(unsupported_filter(&property, "User"));
        }
        if property.eq_ignore_ascii_case("userPrincipalName") {
            Ok(UserFilter::Upn(self.string(&property)?))
        } else if property.eq_ignore_ascii_case("mail") {
            Ok(UserFilter::Mail(self.string(&property)?))
        } else {
            Err(unsupported_filter(&property, "User"))
        }
    }
}

pub(super) fn parse_user_filter(filter: &str) -> Result<UserFilter, GraphError> {
    let mut p = FilterParser {
        filter,
        tokens: tokenize(filter)?,
        at: 0,
    };
    let f = p.or()?;
    if p.at != p.tokens.len() {
        return Err(invalid_filter(filter));
    }
    Ok(f)
}
