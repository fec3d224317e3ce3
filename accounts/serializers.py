from rest_framework import serializers


class CredentialsInputSerializer(serializers.Serializer):
    email = serializers.EmailField(max_length=254)
    password = serializers.CharField(max_length=128, trim_whitespace=False)


class LoginInputSerializer(serializers.Serializer):
    # No email-format validation on login: a malformed email gets the same 401 as a
    # wrong one, so the answer never says which part was wrong.
    email = serializers.CharField(max_length=254)
    password = serializers.CharField(max_length=128, trim_whitespace=False)


class UserOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    email = serializers.EmailField()
    date_joined = serializers.DateTimeField()


class TokenOutputSerializer(serializers.Serializer):
    token = serializers.CharField(source="key")
    created = serializers.DateTimeField()
