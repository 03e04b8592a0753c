"""Customers and the attribution of event subjects to them."""

from tallybook.customers.model import (
    Address,
    ConcurrentChange,
    Customer,
    CustomerError,
    CustomerInput,
    CustomerKeyConflict,
    CustomerListQuery,
    CustomerNotFound,
    CustomerPage,
    InvalidCustomer,
    SeenSubject,
    SubjectConflict,
)
from tallybook.customers.service import CustomerService
from tallybook.customers.validation import parse_customer

__all__ = [
    "Address",
    "ConcurrentChange",
    "Customer",
    "CustomerError",
    "CustomerInput",
    "CustomerKeyConflict",
    "CustomerListQuery",
    "CustomerNotFound",
    "CustomerPage",
    "CustomerService",
    "InvalidCustomer",
    "SeenSubject",
    "SubjectConflict",
    "parse_customer",
]
